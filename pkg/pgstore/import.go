package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/iotgw/iotgw/pkg/outbox"
)

// Device is a devices row as stored, for Import.
type Device struct {
	ID        string
	Enabled   bool
	CreatedAt int64
	RevokedAt *int64 // nil: never revoked
	Freshness string // "timestamp" or "counter"; "" is "timestamp"
}

// DeviceKey is a device_keys row as stored: Secret is copied byte for
// byte (still sealed when Sealed).
type DeviceKey struct {
	DeviceID  string
	KeyID     int64
	Secret    []byte
	Sealed    bool
	CreatedAt int64
	ExpiresAt *int64 // nil: never expires
}

// AuditRow is an audit_log row as stored (hashes in hex), so that the chain
// and every anchor taken of it stay valid.
type AuditRow struct {
	Seq, AtMs                                int64
	Actor, Device, Action, Reason, MessageID string
	Count                                    int64
	PrevHash, Hash                           string
}

// SeenID is a seen row: a message id accepted once, kept for replay refusal.
type SeenID struct {
	DeviceID    string
	MessageID   []byte
	Expires, TS int64
}

// ImportCounts says how many rows of each table an Import copied.
type ImportCounts struct {
	Devices, DeviceKeys, RegistryMeta, AuditLog, AuditHead int64
	// Outbox is pending rows, OutboxDevices the devices they belong to.
	Outbox, OutboxDevices, DeadLetters int64
	// Seen is distinct ids stored (the SQLite seen table may hold an id twice).
	Seen, SeenHorizon int64
	// CounterBounds is counter-mode devices whose bound was copied.
	CounterBounds int64
}

// ErrNotEmpty is returned by BeginImport for a database that already holds
// data: an import copies into an empty schema only.
var ErrNotEmpty = errors.New("the PostgreSQL database is not empty")

// Import is one transaction that copies another engine's data into an empty
// database: nothing is visible to gateways until Commit, and a failure at
// any step leaves the database as it was. Its methods are called from one
// goroutine, in any order except that SeqFloor comes before Pending.
type Import struct {
	tx      pgx.Tx
	o       *Outbox
	n       ImportCounts
	devices map[string]bool
}

// importTables are the tables an import fills, locked for its whole
// transaction (a gateway started meanwhile waits) and required empty.
var importTables = []string{"devices", "device_keys", "registry_meta", "audit_log", "audit_head",
	"outbox_device", "outbox", "seen", "deadletter"}

// BeginImport starts an import: it locks the tables it fills against
// writers and fails with ErrNotEmpty naming a table that has rows.
func (db *DB) BeginImport(ctx context.Context) (*Import, error) {
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	im := &Import{tx: tx, o: db.Outbox(0), devices: map[string]bool{}}
	if err := im.begin(ctx); err != nil {
		im.Rollback(ctx)
		return nil, err
	}
	return im, nil
}

func (im *Import) begin(ctx context.Context) error {
	if _, err := im.tx.Exec(ctx, `LOCK TABLE `+joinIdents(importTables)+` IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		return fmt.Errorf("import: lock tables: %w", err)
	}
	for _, t := range importTables {
		var n int64
		if err := im.tx.QueryRow(ctx, `SELECT COUNT(*) FROM `+pgx.Identifier{t}.Sanitize()).Scan(&n); err != nil {
			return fmt.Errorf("import: count %s: %w", t, err)
		}
		if n > 0 {
			return fmt.Errorf("%w (table %s has %d rows): migrate copies into an empty schema only", ErrNotEmpty, t, n)
		}
	}
	return nil
}

func joinIdents(ts []string) string {
	s := ""
	for i, t := range ts {
		if i > 0 {
			s += ", "
		}
		s += pgx.Identifier{t}.Sanitize()
	}
	return s
}

func (im *Import) copyRows(ctx context.Context, table string, cols []string, rows [][]any) error {
	if len(rows) == 0 {
		return nil
	}
	if _, err := im.tx.CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("import %s: %w", table, err)
	}
	return nil
}

// Devices copies devices rows.
func (im *Import) Devices(ctx context.Context, ds []Device) error {
	rows := make([][]any, len(ds))
	for i, d := range ds {
		fresh := d.Freshness
		if fresh == "" {
			fresh = "timestamp"
		}
		rows[i] = []any{d.ID, d.Enabled, d.CreatedAt, d.RevokedAt, fresh}
	}
	im.n.Devices += int64(len(ds))
	return im.copyRows(ctx, "devices", []string{"device_id", "enabled", "created_at", "revoked_at", "freshness"}, rows)
}

// Keys copies device_keys rows.
func (im *Import) Keys(ctx context.Context, ks []DeviceKey) error {
	rows := make([][]any, len(ks))
	for i, k := range ks {
		rows[i] = []any{k.DeviceID, k.KeyID, k.Secret, k.Sealed, k.CreatedAt, k.ExpiresAt}
	}
	im.n.DeviceKeys += int64(len(ks))
	return im.copyRows(ctx, "device_keys", []string{"device_id", "key_id", "secret", "sealed", "created_at", "expires_at"}, rows)
}

// Meta copies a registry_meta row (kek_fingerprint among them).
func (im *Import) Meta(ctx context.Context, name, value string) error {
	if _, err := im.tx.Exec(ctx, `INSERT INTO registry_meta(name, value) VALUES ($1, $2)`, name, value); err != nil {
		return fmt.Errorf("import registry_meta: %w", err)
	}
	im.n.RegistryMeta++
	return nil
}

// Audit copies audit_log rows exactly.
func (im *Import) Audit(ctx context.Context, as []AuditRow) error {
	rows := make([][]any, len(as))
	for i, a := range as {
		rows[i] = []any{a.Seq, a.AtMs, a.Actor, a.Device, a.Action, a.Reason, a.MessageID, a.Count, a.PrevHash, a.Hash}
	}
	im.n.AuditLog += int64(len(as))
	return im.copyRows(ctx, "audit_log", []string{"seq", "at_ms", "actor", "device", "action", "reason", "message_id", "count", "prev_hash", "hash"}, rows)
}

// AuditHead copies the audit chain's head.
func (im *Import) AuditHead(ctx context.Context, seq int64, hash string) error {
	if _, err := im.tx.Exec(ctx, `INSERT INTO audit_head(id, seq, hash) VALUES (1, $1, $2)`, seq, hash); err != nil {
		return fmt.Errorf("import audit_head: %w", err)
	}
	im.n.AuditHead++
	return nil
}

// SeqFloor makes every outbox row inserted from now on (by Pending, and
// by the gateways afterwards) get a seq above floor: the highest seq the
// old outbox ever gave, so that the copied dead letters, which keep their
// seq, never collide with a row buried later.
func (im *Import) SeqFloor(ctx context.Context, floor int64) error {
	if floor < 1 {
		return nil
	}
	if _, err := im.tx.Exec(ctx, `SELECT setval(pg_get_serial_sequence('outbox', 'seq'), $1)`, floor); err != nil {
		return fmt.Errorf("import outbox seq: %w", err)
	}
	return nil
}

// Pending copies pending outbox rows, in the order given (the old seq
// order): each device's rows get DSeq 1..n in that order across calls, and
// the devices' next_dseq and pending counters follow. ReceivedAt is kept;
// the replay ids are copied by Seen.
func (im *Import) Pending(ctx context.Context, recs []*outbox.Record) error {
	if len(recs) == 0 {
		return nil
	}
	if err := im.o.insertLocked(ctx, im.tx, recs); err != nil {
		return fmt.Errorf("import outbox: %w", err)
	}
	for _, r := range recs {
		if !im.devices[r.DeviceID] {
			im.devices[r.DeviceID] = true
			im.n.OutboxDevices++
		}
	}
	im.n.Outbox += int64(len(recs))
	return nil
}

// CounterBound copies a counter-mode device's bound (the highest counter
// it had accepted) and its reset floor (the key of its last reset).
func (im *Import) CounterBound(ctx context.Context, id string, bound, minKey int64) error {
	if _, err := im.tx.Exec(ctx, `INSERT INTO outbox_device(device_id, counter_bound, counter_min_key) VALUES ($1, $2, $3)
		ON CONFLICT (device_id) DO UPDATE SET counter_bound = excluded.counter_bound, counter_min_key = excluded.counter_min_key`, id, bound, minKey); err != nil {
		return fmt.Errorf("import counter bound: %w", err)
	}
	im.n.CounterBounds++
	return nil
}

// Dead copies dead letters, keeping their seq.
func (im *Import) Dead(ctx context.Context, ds []outbox.Dead) error {
	rows := make([][]any, len(ds))
	for i, d := range ds {
		rows[i] = []any{d.Seq, d.DeviceID, d.MessageID, d.Timestamp, d.Payload, d.ReceivedAt.UnixMilli(), d.Attempts, d.LastError, d.DeadAt.Unix()}
	}
	im.n.DeadLetters += int64(len(ds))
	return im.copyRows(ctx, "deadletter", []string{"seq", "device_id", "message_id", "timestamp", "payload", "received_at", "attempts", "last_error", "dead_at"}, rows)
}

// Seen copies replay ids. An id given twice is stored once, with the later
// expiry and timestamp (so kept at least as long as either copy said).
func (im *Import) Seen(ctx context.Context, ids []SeenID) error {
	if len(ids) == 0 {
		return nil
	}
	n := len(ids)
	devs, mids, exp, ts := make([]string, n), make([][]byte, n), make([]int64, n), make([]int64, n)
	for i, s := range ids {
		devs[i], mids[i], exp[i], ts[i] = s.DeviceID, s.MessageID, s.Expires, s.TS
	}
	_, err := im.tx.Exec(ctx, `INSERT INTO seen(device_id, message_id, expires, ts)
		SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::int8[])
		ON CONFLICT (device_id, message_id) DO UPDATE SET expires = GREATEST(seen.expires, excluded.expires), ts = GREATEST(seen.ts, excluded.ts)`,
		devs, mids, exp, ts)
	if err != nil {
		return fmt.Errorf("import seen: %w", err)
	}
	return nil
}

// SeenHorizon copies the horizon below which replay ids may have been pruned.
func (im *Import) SeenHorizon(ctx context.Context, ts int64) error {
	if _, err := im.tx.Exec(ctx, `UPDATE seen_horizon SET ts = $1 WHERE id = 1`, ts); err != nil {
		return fmt.Errorf("import seen_horizon: %w", err)
	}
	im.n.SeenHorizon = 1
	return nil
}

// Commit commits the import and returns what it copied.
func (im *Import) Commit(ctx context.Context) (ImportCounts, error) {
	if err := im.tx.QueryRow(ctx, `SELECT COUNT(*) FROM seen`).Scan(&im.n.Seen); err != nil {
		return ImportCounts{}, fmt.Errorf("import seen: %w", err)
	}
	if err := im.tx.Commit(ctx); err != nil {
		return ImportCounts{}, fmt.Errorf("import commit: %w", err)
	}
	return im.n, nil
}

// Rollback abandons the import (a no-op after Commit).
func (im *Import) Rollback(ctx context.Context) { _ = im.tx.Rollback(ctx) }
