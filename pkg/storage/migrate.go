package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"time"

	_ "github.com/mattn/go-sqlite3" // the "sqlite3" driver, for reading the old files

	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
)

// The SQLite schema versions MigrateSQLite reads: the latest of the
// registry (schema_migrations of registry.path), its audit tables
// (audit_migrations) and the outbox (schema_migrations of outbox.path).
// A file at another version is refused: an older one is brought up to date
// by opening it (iotgw migrate with storage.engine sqlite), a newer one
// needs a newer iotgw.
const (
	sqliteRegistryVersion = 3
	sqliteAuditVersion    = 1
	sqliteOutboxVersion   = 5
)

// importBatch is how many rows one statement copies.
const importBatch = 500

// MigrateSQLite copies one gateway's SQLite files into db, an empty
// PostgreSQL schema, in one transaction: from registryPath the devices,
// their keys (secrets byte for byte, still sealed), registry_meta (the KEK
// fingerprint) and the audit chain (rows and head exactly, so verify and
// old anchors still hold); from outboxPath the pending rows (in seq order,
// each device's rows numbered 1..n in that order, receive times kept), the
// dead letters, the replay ids and their horizon.
//
// It holds the outbox lock (outbox.Lock) for the whole copy, so it fails,
// naming outbox.path, while a gateway runs on the files; and it reads each
// file read-only, in one snapshot. A database that holds data already is
// refused (pgstore.ErrNotEmpty) and nothing is written.
func MigrateSQLite(ctx context.Context, registryPath, outboxPath string, db *pgstore.DB) (pgstore.ImportCounts, error) {
	for _, f := range []struct{ key, path string }{{"registry.path", registryPath}, {"outbox.path", outboxPath}} {
		if _, err := os.Stat(f.path); err != nil {
			return pgstore.ImportCounts{}, fmt.Errorf("%s: %s: %w", f.key, f.path, errors.Unwrap(err))
		}
	}
	unlock, err := sqlitestore.Lock(outboxPath)
	if errors.Is(err, sqlitestore.ErrLocked) {
		return pgstore.ImportCounts{}, fmt.Errorf("outbox.path: %w: stop it first", err)
	}
	if err != nil {
		return pgstore.ImportCounts{}, fmt.Errorf("outbox.path: %w", err)
	}
	defer unlock()

	reg, err := openReadOnly(ctx, "registry.path", registryPath)
	if err != nil {
		return pgstore.ImportCounts{}, err
	}
	defer reg.Rollback() //nolint:errcheck // a read-only snapshot
	ob, err := openReadOnly(ctx, "outbox.path", outboxPath)
	if err != nil {
		return pgstore.ImportCounts{}, err
	}
	defer ob.Rollback() //nolint:errcheck // a read-only snapshot
	if err := checkVersions(ctx, reg, ob, registryPath, outboxPath); err != nil {
		return pgstore.ImportCounts{}, err
	}

	im, err := db.BeginImport(ctx)
	if err != nil {
		return pgstore.ImportCounts{}, fmt.Errorf("storage.dsn: %w", err)
	}
	defer im.Rollback(ctx)
	if err := copyRegistry(ctx, reg, im); err != nil {
		return pgstore.ImportCounts{}, fmt.Errorf("registry.path %s: %w", registryPath, err)
	}
	if err := copyOutbox(ctx, ob, im); err != nil {
		return pgstore.ImportCounts{}, fmt.Errorf("outbox.path %s: %w", outboxPath, err)
	}
	n, err := im.Commit(ctx)
	if err != nil {
		return pgstore.ImportCounts{}, fmt.Errorf("storage.dsn: %w", err)
	}
	return n, nil
}

// snapshot is one read transaction on a SQLite file opened read-only.
type snapshot struct {
	db *sql.DB
	*sql.Tx
}

func (s *snapshot) Rollback() error {
	err := s.Tx.Rollback()
	s.db.Close()
	return err
}

// openReadOnly opens path read-only (mode=ro: SQLite refuses every write,
// so the file is left as it was) and begins the read transaction that every
// query of the copy runs in: one consistent snapshot even if a CLI command
// writes the file meanwhile.
func openReadOnly(ctx context.Context, key, path string) (*snapshot, error) {
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro&_busy_timeout=5000")
	if err != nil {
		return nil, fmt.Errorf("%s: open %s: %w", key, path, err)
	}
	db.SetMaxOpenConns(1)
	tx, err := db.BeginTx(ctx, nil)
	if err == nil {
		// A deferred transaction takes its snapshot at the first read.
		_, err = tx.ExecContext(ctx, `SELECT COUNT(*) FROM sqlite_master`)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: open %s: %w", key, path, err)
	}
	return &snapshot{db: db, Tx: tx}, nil
}

// tableVersion returns the highest version recorded in table, 0 if the
// table does not exist.
func tableVersion(ctx context.Context, tx *snapshot, table string) (int, error) {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?`, table).Scan(&n); err != nil || n == 0 {
		return 0, err
	}
	var v int
	err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM `+table).Scan(&v) //nolint:gosec // G202: table is one of our constants
	return v, err
}

func checkVersions(ctx context.Context, reg, ob *snapshot, registryPath, outboxPath string) error {
	for _, c := range []struct {
		key, path, what string
		tx              *snapshot
		table           string
		want            int
		optional        bool
		holds           string // a table only this kind of file has
	}{
		{"registry.path", registryPath, "registry", reg, "schema_migrations", sqliteRegistryVersion, false, "device_keys"},
		{"registry.path", registryPath, "audit", reg, "audit_migrations", sqliteAuditVersion, true, "audit_log"},
		{"outbox.path", outboxPath, "outbox", ob, "schema_migrations", sqliteOutboxVersion, false, "seen"},
	} {
		v, err := tableVersion(ctx, c.tx, c.table)
		if err == nil && v > 0 {
			var n int
			err = c.tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?`, c.holds).Scan(&n)
			if n == 0 {
				v = 0
			}
		}
		switch {
		case err != nil:
			return fmt.Errorf("%s: %s: read %s schema version: %w", c.key, c.path, c.what, err)
		case v == 0 && c.optional:
		case v == 0:
			return fmt.Errorf("%s: %s is not an iotgw %s database", c.key, c.path, c.what)
		case v < c.want:
			return fmt.Errorf("%s: %s has %s schema version %d, older than %d: bring it up to date first (iotgw migrate with storage.engine sqlite)", c.key, c.path, c.what, v, c.want)
		case v > c.want:
			return fmt.Errorf("%s: %s has %s schema version %d, newer than this iotgw copies (%d): use the iotgw that wrote it", c.key, c.path, c.what, v, c.want)
		}
	}
	return nil
}

// each runs q and calls scan for every row.
func each(ctx context.Context, tx *snapshot, q string, scan func(*sql.Rows) error) error {
	rows, err := tx.QueryContext(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// batcher collects rows and hands them to flush importBatch at a time.
type batcher[T any] struct {
	buf   []T
	flush func([]T) error
}

func (b *batcher[T]) add(v T) error {
	b.buf = append(b.buf, v)
	if len(b.buf) < importBatch {
		return nil
	}
	return b.done()
}

func (b *batcher[T]) done() error {
	if len(b.buf) == 0 {
		return nil
	}
	err := b.flush(b.buf)
	b.buf = b.buf[:0]
	return err
}

// finish flushes b after a copy loop that ended with err.
func finish[T any](what string, err error, b *batcher[T]) error {
	if err == nil {
		err = b.done()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func nullable(n sql.NullInt64) *int64 {
	if !n.Valid {
		return nil
	}
	return &n.Int64
}

func copyRegistry(ctx context.Context, tx *snapshot, im *pgstore.Import) error {
	devs := &batcher[pgstore.Device]{flush: func(d []pgstore.Device) error { return im.Devices(ctx, d) }}
	err := each(ctx, tx, `SELECT device_id, enabled, created_at, revoked_at, freshness FROM devices ORDER BY device_id`, func(r *sql.Rows) error {
		var d pgstore.Device
		var enabled int64
		var revoked sql.NullInt64
		if err := r.Scan(&d.ID, &enabled, &d.CreatedAt, &revoked, &d.Freshness); err != nil {
			return err
		}
		d.Enabled, d.RevokedAt = enabled != 0, nullable(revoked)
		return devs.add(d)
	})
	if err := finish("devices", err, devs); err != nil {
		return err
	}
	keys := &batcher[pgstore.DeviceKey]{flush: func(k []pgstore.DeviceKey) error { return im.Keys(ctx, k) }}
	err = each(ctx, tx, `SELECT device_id, key_id, CAST(secret AS BLOB), sealed, created_at, expires_at FROM device_keys ORDER BY device_id, key_id`, func(r *sql.Rows) error {
		var k pgstore.DeviceKey
		var sealed int64
		var expires sql.NullInt64
		if err := r.Scan(&k.DeviceID, &k.KeyID, &k.Secret, &sealed, &k.CreatedAt, &expires); err != nil {
			return err
		}
		k.Secret = append([]byte{}, k.Secret...) // non-nil even when empty: the column is NOT NULL
		k.Sealed, k.ExpiresAt = sealed != 0, nullable(expires)
		return keys.add(k)
	})
	if err := finish("device_keys", err, keys); err != nil {
		return err
	}
	err = each(ctx, tx, `SELECT name, value FROM registry_meta ORDER BY name`, func(r *sql.Rows) error {
		var name, value string
		if err := r.Scan(&name, &value); err != nil {
			return err
		}
		return im.Meta(ctx, name, value)
	})
	if err != nil {
		return fmt.Errorf("registry_meta: %w", err)
	}
	if v, err := tableVersion(ctx, tx, "audit_migrations"); err != nil || v == 0 {
		return err // no audit trail in this file yet
	}
	log := &batcher[pgstore.AuditRow]{flush: func(a []pgstore.AuditRow) error { return im.Audit(ctx, a) }}
	err = each(ctx, tx, `SELECT seq, at_ms, actor, device, action, reason, message_id, count, prev_hash, hash FROM audit_log ORDER BY seq`, func(r *sql.Rows) error {
		var a pgstore.AuditRow
		if err := r.Scan(&a.Seq, &a.AtMs, &a.Actor, &a.Device, &a.Action, &a.Reason, &a.MessageID, &a.Count, &a.PrevHash, &a.Hash); err != nil {
			return err
		}
		return log.add(a)
	})
	if err := finish("audit_log", err, log); err != nil {
		return err
	}
	err = each(ctx, tx, `SELECT seq, hash FROM audit_head WHERE id = 1`, func(r *sql.Rows) error {
		var seq int64
		var hash string
		if err := r.Scan(&seq, &hash); err != nil {
			return err
		}
		return im.AuditHead(ctx, seq, hash)
	})
	if err != nil {
		return fmt.Errorf("audit_head: %w", err)
	}
	return nil
}

func copyOutbox(ctx context.Context, tx *snapshot, im *pgstore.Import) error {
	// The highest seq the outbox ever gave (AUTOINCREMENT's high-water
	// mark, which also covers rows buried or deleted since), and the dead
	// letters' seqs, which the copy keeps.
	var floor int64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
		COALESCE((SELECT MAX(seq) FROM outbox), 0), COALESCE((SELECT MAX(seq) FROM deadletter), 0))`).Scan(&floor); err != nil {
		return fmt.Errorf("outbox seq: %w", err)
	}
	if err := im.SeqFloor(ctx, floor); err != nil {
		return err
	}
	pend := &batcher[*outbox.Record]{flush: func(r []*outbox.Record) error { return im.Pending(ctx, r) }}
	err := each(ctx, tx, `SELECT device_id, message_id, timestamp, payload, received_at FROM outbox ORDER BY seq`, func(r *sql.Rows) error {
		rec := &outbox.Record{}
		var ms int64
		if err := r.Scan(&rec.DeviceID, &rec.MessageID, &rec.Timestamp, &rec.Payload, &ms); err != nil {
			return err
		}
		rec.Payload = append([]byte{}, rec.Payload...)
		rec.ReceivedAt = time.UnixMilli(ms)
		return pend.add(rec)
	})
	if err := finish("outbox", err, pend); err != nil {
		return err
	}
	dead := &batcher[outbox.Dead]{flush: func(d []outbox.Dead) error { return im.Dead(ctx, d) }}
	err = each(ctx, tx, `SELECT seq, device_id, message_id, timestamp, payload, received_at, attempts, last_error, dead_at FROM deadletter ORDER BY seq`, func(r *sql.Rows) error {
		var d outbox.Dead
		var ms, at int64
		if err := r.Scan(&d.Seq, &d.DeviceID, &d.MessageID, &d.Timestamp, &d.Payload, &ms, &d.Attempts, &d.LastError, &at); err != nil {
			return err
		}
		d.Payload = append([]byte{}, d.Payload...)
		d.ReceivedAt, d.DeadAt = time.UnixMilli(ms), time.Unix(at, 0)
		return dead.add(d)
	})
	if err := finish("deadletter", err, dead); err != nil {
		return err
	}
	// Counter-mode bounds: without them every counter a device ever sent
	// would be accepted again after the move.
	err = each(ctx, tx, `SELECT device_id, bound, min_key FROM counter_bound ORDER BY device_id`, func(r *sql.Rows) error {
		var id string
		var b, minKey int64
		if err := r.Scan(&id, &b, &minKey); err != nil {
			return err
		}
		return im.CounterBound(ctx, id, b, minKey)
	})
	if err != nil {
		return fmt.Errorf("counter_bound: %w", err)
	}
	seen := &batcher[pgstore.SeenID]{flush: func(s []pgstore.SeenID) error { return im.Seen(ctx, s) }}
	err = each(ctx, tx, `SELECT device_id, message_id, expires, ts FROM seen`, func(r *sql.Rows) error {
		var s pgstore.SeenID
		if err := r.Scan(&s.DeviceID, &s.MessageID, &s.Expires, &s.TS); err != nil {
			return err
		}
		s.MessageID = append([]byte{}, s.MessageID...)
		return seen.add(s)
	})
	if err := finish("seen", err, seen); err != nil {
		return err
	}
	var horizon int64
	if err := tx.QueryRowContext(ctx, `SELECT ts FROM seen_horizon WHERE id = 1`).Scan(&horizon); err != nil {
		return fmt.Errorf("seen_horizon: %w", err)
	}
	return im.SeenHorizon(ctx, horizon)
}
