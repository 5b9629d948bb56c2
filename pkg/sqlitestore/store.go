package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/sqlitex"
	"github.com/iotgw/iotgw/pkg/outbox"
)

var migrations = []sqlitex.Migration{
	{Version: 1, SQL: `
CREATE TABLE outbox (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	device_id   TEXT NOT NULL,
	message_id  TEXT NOT NULL,
	timestamp   TEXT NOT NULL,
	payload     BLOB NOT NULL,
	received_at INTEGER NOT NULL
);
CREATE TABLE seen (
	device_id  TEXT NOT NULL,
	message_id BLOB NOT NULL,
	expires    INTEGER NOT NULL,
	PRIMARY KEY (device_id, message_id)
) WITHOUT ROWID;
CREATE INDEX seen_expires ON seen(expires);
CREATE TABLE deadletter (
	seq         INTEGER PRIMARY KEY,
	device_id   TEXT NOT NULL,
	message_id  TEXT NOT NULL,
	timestamp   TEXT NOT NULL,
	payload     BLOB NOT NULL,
	received_at INTEGER NOT NULL,
	attempts    INTEGER NOT NULL,
	last_error  TEXT NOT NULL,
	dead_at     INTEGER NOT NULL
);`},
	// v2: seen loses its primary key. The in-memory replay store answers
	// "seen before?"; SQLite only keeps the ids for the rebuild at start
	// and prunes them by expiry. A random-UUID primary key made every
	// insert land on a random B-tree page (20 µs a message in
	// BenchmarkWrite, 7.6 µs without it). A duplicate row is harmless: the
	// rebuild skips ids already loaded.
	{Version: 2, SQL: `
CREATE TABLE seen_v2 (
	device_id  TEXT NOT NULL,
	message_id BLOB NOT NULL,
	expires    INTEGER NOT NULL
);
INSERT INTO seen_v2(device_id, message_id, expires) SELECT device_id, message_id, expires FROM seen;
DROP TABLE seen;
ALTER TABLE seen_v2 RENAME TO seen;
CREATE INDEX seen_expires ON seen(expires);`},
	// v3: seen keeps each message's timestamp, so that the replay window
	// can be rebuilt with the skew in force now rather than the one the id
	// was stored with (a max_clock_skew raised across a restart must not
	// reopen replays; issue 9, finding 3). Rows from before have no
	// timestamp; their expiry stands in for it, which keeps them longer
	// (never shorter) than needed. seen_horizon remembers up to which
	// timestamp ids may have been pruned (see SeenHorizon).
	{Version: 3, SQL: `
ALTER TABLE seen ADD COLUMN ts INTEGER NOT NULL DEFAULT 0;
UPDATE seen SET ts = expires;
CREATE TABLE seen_horizon (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	ts INTEGER NOT NULL
);
INSERT INTO seen_horizon(id, ts) VALUES (1, 0);`},
	// v4: counter mode (issue 17). counter_bound holds, per counter-mode
	// device, the highest counter accepted; Commit raises it in the
	// transaction that inserts the message, and refuses a counter at or
	// below it. A counter-mode message's outbox row keeps its counter in
	// the timestamp column (outbox.CounterMark), and it has no seen row.
	{Version: 4, SQL: `
CREATE TABLE counter_bound (
	device_id TEXT PRIMARY KEY NOT NULL,
	bound     INTEGER NOT NULL
) WITHOUT ROWID;`},
	// v5: the reset floor (issue 17). min_key is the key that `iotgw
	// device reset-counter` issued with the reset: a counter-mode message
	// verified with an older key is refused however high its counter (a
	// running gateway may still hold the old key in its registry cache for
	// a moment after the reset, and must not accept the old key's
	// messages, replayed or new, against the reset bound).
	{Version: 5, SQL: `
ALTER TABLE counter_bound ADD COLUMN min_key INTEGER NOT NULL DEFAULT 0;`},
}

// Store is the outbox database.
type Store struct {
	db *sql.DB
	// st are the writer's statements, prepared once on the one connection
	// (each transaction used to prepare them again: a cost every commit
	// paid, most visible at steady rates, with one message per commit).
	st stmts
	// leases, once Leases made it, is told every row committed or found.
	leases *Leases
}

// Open opens (creating if needed) the outbox database and migrates it.
func Open(ctx context.Context, cfg outbox.Config) (*Store, error) {
	path := cfg.Path
	sync := strings.ToUpper(cfg.Synchronous)
	if sync == "" {
		sync = "FULL"
	}
	db, err := sqlitex.OpenSync(path, sync)
	if err != nil {
		return nil, err
	}
	// One connection: every write is serialized in Go, so the writer never
	// sleeps in SQLite's busy handler behind another of our own writes.
	db.SetMaxOpenConns(1)
	if err := sqlitex.Migrate(ctx, db, migrations); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate outbox %s: %w", path, err)
	}
	s := &Store{db: db}
	if err := s.st.prepare(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("outbox %s: %w", path, err)
	}
	return s, nil
}

// stmts are the statements of the writer's commit. Multi-row inserts and
// deletes of other sizes are prepared as they come.
type stmts struct {
	insOutbox *sql.Stmt // one outbox row
	insSeen1  *sql.Stmt // one replay id
	del1      *sql.Stmt // one settled row
	raise     *sql.Stmt // a counter-mode device's bound, raised if below
}

func (st *stmts) prepare(ctx context.Context, db *sql.DB) error {
	for _, p := range []struct {
		to *(*sql.Stmt)
		q  string
	}{
		{&st.insOutbox, `INSERT INTO outbox(device_id, message_id, timestamp, payload, received_at) VALUES(?,?,?,?,?)`},
		{&st.insSeen1, `INSERT INTO seen(device_id, message_id, expires, ts) VALUES (?,?,?,?)`},
		{&st.del1, `DELETE FROM outbox WHERE seq IN (?)`},
		// A counter above the bound (which starts at 0, so counter 0 is
		// never accepted), from a key at or above the reset floor.
		{&st.raise, `INSERT INTO counter_bound(device_id, bound) SELECT ?1, ?2 WHERE ?2 > 0
			ON CONFLICT(device_id) DO UPDATE SET bound = excluded.bound WHERE bound < excluded.bound AND min_key <= ?3`},
	} {
		s, err := db.PrepareContext(ctx, p.q) //nolint:sqlclosecheck // kept for the Store's life: closed by Close
		if err != nil {
			st.close()
			return fmt.Errorf("prepare: %w", err)
		}
		*p.to = s
	}
	return nil
}

func (st *stmts) close() {
	for _, s := range []*sql.Stmt{st.insOutbox, st.insSeen1, st.del1, st.raise} {
		if s != nil {
			s.Close()
		}
	}
}

// Close closes the database.
func (s *Store) Close() error {
	s.st.close()
	return s.db.Close()
}

// Insert stores recs and their ids in one transaction and sets each Seq.
// Either all are durable or none is.
func (s *Store) Insert(ctx context.Context, recs []*outbox.Record) error {
	res, err := s.write(ctx, recs, nil, -1)
	if err == nil && len(res.Refused) > 0 {
		return fmt.Errorf("insert: %d counter-mode records at or below their device's bound", len(res.Refused))
	}
	return err
}

// Commit implements Committer. SQLite's single gateway refuses only a
// counter-mode message whose counter is at or below its device's bound
// (Refusal.Counter); for timestamp-mode messages its replay store in
// memory is the authority.
func (s *Store) Commit(ctx context.Context, recs []*outbox.Record, dels []int64, lastSeq int64) (outbox.Result, error) {
	return s.write(ctx, recs, dels, lastSeq)
}

// write inserts recs and deletes the settled rows dels in one transaction.
// A counter-mode record goes in only if it raises its device's bound
// (else it is refused, and the others still go in). When lastSeq ≥ 0 it
// also returns, read in the same transaction, rows another process
// inserted after lastSeq and before recs (a dead letter retried by the
// CLI).
func (s *Store) write(ctx context.Context, recs []*outbox.Record, dels []int64, lastSeq int64) (outbox.Result, error) {
	var res outbox.Result
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return res, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after commit
	recs, seen, err := s.raiseBounds(ctx, tx, recs, &res)
	if err != nil {
		return outbox.Result{}, err
	}
	ins := tx.StmtContext(ctx, s.st.insOutbox)
	defer ins.Close()
	for _, r := range recs {
		r2, err := ins.ExecContext(ctx, r.DeviceID, r.MessageID, r.Timestamp, r.Payload, r.ReceivedAt.UnixMilli())
		if err != nil {
			return outbox.Result{}, fmt.Errorf("insert outbox: %w", err)
		}
		if r.Seq, err = r2.LastInsertId(); err != nil {
			return outbox.Result{}, fmt.Errorf("insert outbox: %w", err)
		}
		r.DSeq = r.Seq
	}
	if err := insertSeen(ctx, tx, s.st.insSeen1, seen); err != nil {
		return outbox.Result{}, err
	}
	if err := deleteSeqs(ctx, tx, s.st.del1, dels); err != nil {
		return outbox.Result{}, err
	}
	if lastSeq >= 0 && len(recs) > 0 && recs[0].Seq != lastSeq+1 {
		if res.Foreign, err = pendingBetween(ctx, tx, lastSeq, recs[0].Seq); err != nil {
			return outbox.Result{}, err
		}
	}
	if err := tx.Commit(); err != nil {
		return outbox.Result{}, fmt.Errorf("commit: %w", err)
	}
	if s.leases != nil { // in seq order: another process's rows came before recs
		s.leases.Add(res.Foreign)
		s.leases.Add(recs)
	}
	return res, nil
}

// raiseBounds raises the bound of each counter-mode record's device to
// its counter, in order, and returns the records to insert (the refused
// ones left out, and added to res.Refused) and, of those, the
// timestamp-mode ones, whose ids go into the seen table. With no
// counter-mode record it returns recs as they are.
func (s *Store) raiseBounds(ctx context.Context, tx *sql.Tx, recs []*outbox.Record, res *outbox.Result) (keep, seen []*outbox.Record, err error) {
	n := 0
	for _, r := range recs {
		if _, ok := r.Counter(); ok {
			n++
		}
	}
	if n == 0 {
		return recs, recs, nil
	}
	raise := tx.StmtContext(ctx, s.st.raise)
	defer raise.Close()
	keep = make([]*outbox.Record, 0, len(recs))
	seen = make([]*outbox.Record, 0, len(recs)-n)
	for _, r := range recs {
		c, ok := r.Counter()
		if !ok {
			keep, seen = append(keep, r), append(seen, r)
			continue
		}
		up, err := raise.ExecContext(ctx, r.DeviceID, c, r.KeyID)
		if err != nil {
			return nil, nil, fmt.Errorf("raise counter bound: %w", err)
		}
		if changed, err := up.RowsAffected(); err != nil {
			return nil, nil, fmt.Errorf("raise counter bound: %w", err)
		} else if changed == 0 {
			res.Refused = append(res.Refused, outbox.Refusal{Rec: r, Counter: true})
			continue
		}
		keep = append(keep, r)
	}
	return keep, seen, nil
}

// CounterBound returns the highest counter accepted from device id (0 when
// none was).
func (s *Store) CounterBound(ctx context.Context, id string) (int64, error) {
	var b int64
	err := s.db.QueryRowContext(ctx, `SELECT bound FROM counter_bound WHERE device_id = ?`, id).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("counter bound: %w", err)
	}
	return b, nil
}

// ResetCounter sets device id's bound back to 0 and its reset floor to
// minKey, the key the reset issued (iotgw device reset-counter), and
// returns the bound it had.
func (s *Store) ResetCounter(ctx context.Context, id string, minKey int64) (int64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("reset counter: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after commit
	var old int64
	if err := tx.QueryRowContext(ctx, `SELECT bound FROM counter_bound WHERE device_id = ?`, id).Scan(&old); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("reset counter: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO counter_bound(device_id, bound, min_key) VALUES(?1, 0, ?2)
		ON CONFLICT(device_id) DO UPDATE SET bound = 0, min_key = excluded.min_key`, id, minKey); err != nil {
		return 0, fmt.Errorf("reset counter: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("reset counter: %w", err)
	}
	return old, nil
}

// Delete removes settled rows in one transaction.
func (s *Store) Delete(ctx context.Context, seqs []int64) error {
	if len(seqs) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck
	if err := deleteSeqs(ctx, tx, s.st.del1, seqs); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// execIn runs the prepared statement st within tx.
func execIn(ctx context.Context, tx *sql.Tx, st *sql.Stmt, args ...any) error {
	s := tx.StmtContext(ctx, st)
	defer s.Close()
	_, err := s.ExecContext(ctx, args...)
	return err
}

// deleteSeqs deletes rows seqs, 500 per statement; one with del1 (the
// prepared statement for one row).
func deleteSeqs(ctx context.Context, tx *sql.Tx, del1 *sql.Stmt, seqs []int64) error {
	if len(seqs) == 1 {
		if err := execIn(ctx, tx, del1, seqs[0]); err != nil {
			return fmt.Errorf("delete outbox: %w", err)
		}
		return nil
	}
	for start := 0; start < len(seqs); start += 500 {
		chunk := seqs[start:min(start+500, len(seqs))]
		args := make([]any, len(chunk))
		for i, s := range chunk {
			args[i] = s
		}
		q := `DELETE FROM outbox WHERE seq IN (?` + strings.Repeat(",?", len(chunk)-1) + `)` //nolint:gosec // G202: only "?" placeholders are concatenated; every value is a bound parameter
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("delete outbox: %w", err)
		}
	}
	return nil
}

// Bury moves a row to the dead-letter table.
func (s *Store) Bury(ctx context.Context, seq int64, attempts int, lastErr string, now time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck
	if _, err := tx.ExecContext(ctx, `INSERT INTO deadletter(seq, device_id, message_id, timestamp, payload, received_at, attempts, last_error, dead_at)
		SELECT seq, device_id, message_id, timestamp, payload, received_at, ?, ?, ? FROM outbox WHERE seq = ?`,
		attempts, lastErr, now.Unix(), seq); err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM outbox WHERE seq = ?`, seq); err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// Pending returns rows with seq > after, oldest first (another process's:
// the CLI's dead-letter retry), and makes them claimable (Leases).
func (s *Store) Pending(ctx context.Context, after int64) ([]*outbox.Record, error) {
	rows, err := pendingBetween(ctx, s.db, after, math.MaxInt64)
	if err == nil && s.leases != nil {
		s.leases.Add(rows)
	}
	return rows, err
}

// PendingMeta returns every row, oldest first, without its payload (see
// Payload), so that a large backlog does not have to fit in memory.
func (s *Store) PendingMeta(ctx context.Context) ([]*outbox.Record, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, device_id, message_id, timestamp, received_at FROM outbox ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("load outbox: %w", err)
	}
	defer rows.Close()
	var out []*outbox.Record
	for rows.Next() {
		r := &outbox.Record{}
		var ms int64
		if err := rows.Scan(&r.Seq, &r.DeviceID, &r.MessageID, &r.Timestamp, &ms); err != nil {
			return nil, fmt.Errorf("load outbox: %w", err)
		}
		r.DSeq, r.ReceivedAt = r.Seq, time.UnixMilli(ms)
		out = append(out, r)
	}
	return out, rows.Err()
}

// LastAccepted returns when device's newest accepted message still on
// record was accepted: the later of its newest pending row's receive time
// and its newest replay id's timestamp (ids are kept for the replay
// window); zero when neither holds one.
func (s *Store) LastAccepted(ctx context.Context, device string) (time.Time, error) {
	var ms, ts sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT (SELECT max(received_at) FROM outbox WHERE device_id = ?), (SELECT max(ts) FROM seen WHERE device_id = ?)`,
		device, device).Scan(&ms, &ts)
	if err != nil {
		return time.Time{}, fmt.Errorf("last accepted: %w", err)
	}
	return outbox.LastAccepted(ms.Int64, ts.Int64), nil
}

// Payload returns the payload of row seq, or ErrNoRow.
func (s *Store) Payload(ctx context.Context, seq int64) ([]byte, error) {
	var p []byte
	err := s.db.QueryRowContext(ctx, `SELECT payload FROM outbox WHERE seq = ?`, seq).Scan(&p)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("outbox row %d: %w", seq, outbox.ErrNoRow)
	}
	if err != nil {
		return nil, fmt.Errorf("load payload: %w", err)
	}
	return p, nil
}

type querier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

// pendingBetween returns rows with after < seq < before, oldest first.
func pendingBetween(ctx context.Context, db querier, after, before int64) ([]*outbox.Record, error) {
	rows, err := db.QueryContext(ctx, `SELECT seq, device_id, message_id, timestamp, payload, received_at FROM outbox WHERE seq > ? AND seq < ? ORDER BY seq`, after, before)
	if err != nil {
		return nil, fmt.Errorf("load outbox: %w", err)
	}
	defer rows.Close()
	var out []*outbox.Record
	for rows.Next() {
		r := &outbox.Record{}
		var ms int64
		if err := rows.Scan(&r.Seq, &r.DeviceID, &r.MessageID, &r.Timestamp, &r.Payload, &ms); err != nil {
			return nil, fmt.Errorf("load outbox: %w", err)
		}
		r.DSeq, r.ReceivedAt = r.Seq, time.UnixMilli(ms)
		out = append(out, r)
	}
	return out, rows.Err()
}

// Count returns how many rows wait in the outbox.
func (s *Store) Count(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&n)
	return n, err
}

// Seen calls fn for every id still inside the replay window at now. An
// id's expiry is the later of the one it was stored with and its message's
// timestamp + window (the max_clock_skew in force now), so raising the skew
// across a restart keeps ids as long as a copy would pass the freshness
// check. fn gets that expiry.
func (s *Store) Seen(ctx context.Context, now time.Time, window time.Duration, fn func(deviceID string, id [16]byte, expires time.Time) error) error {
	w := int64(window / time.Second)
	rows, err := s.db.QueryContext(ctx, `SELECT device_id, message_id, max(expires, ts + ?) FROM seen WHERE expires >= ? OR ts >= ?`,
		w, now.Unix(), now.Unix()-w)
	if err != nil {
		return fmt.Errorf("load seen: %w", err)
	}
	defer rows.Close()
	return outbox.ScanSeen(rows, fn)
}

// PruneSeen deletes ids that left the replay window before now (both their
// stored expiry and their timestamp + window are before now; see Seen) and
// returns how many.
//
// It also raises the horizon (SeenHorizon) to now - window when it deleted
// anything, in the same transaction.
func (s *Store) PruneSeen(ctx context.Context, now time.Time, window time.Duration) (int64, error) {
	cut := now.Unix() - int64(window/time.Second)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("prune seen: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after commit
	res, err := tx.ExecContext(ctx, `DELETE FROM seen WHERE expires < ? AND ts < ?`, now.Unix(), cut)
	if err != nil {
		return 0, fmt.Errorf("prune seen: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("prune seen: %w", err)
	}
	if n > 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE seen_horizon SET ts = max(ts, ?) WHERE id = 1`, cut); err != nil {
			return 0, fmt.Errorf("prune seen: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("prune seen: commit: %w", err)
	}
	return n, nil
}

// FreshnessWindow is storage.Outbox's: SQLite serves one gateway, whose
// window may change across restarts (Seen and SeenHorizon keep replays
// closed when it does), so any window is agreed to.
func (s *Store) FreshnessWindow(context.Context, time.Duration) error { return nil }

// SeenHorizon returns the timestamp before which accepted ids may have
// been pruned: every id of a message with a later timestamp is still in
// the seen table. A gateway whose window now reaches further back (the
// skew was raised, or the clock stepped back) must refuse messages older
// than it, since it can no longer tell a copy from a new message.
func (s *Store) SeenHorizon(ctx context.Context) (time.Time, error) {
	var ts int64
	if err := s.db.QueryRowContext(ctx, `SELECT ts FROM seen_horizon WHERE id = 1`).Scan(&ts); err != nil {
		return time.Time{}, fmt.Errorf("load seen horizon: %w", err)
	}
	return time.Unix(ts, 0), nil
}

// DeadLetters lists dead-lettered messages, oldest first.
func (s *Store) DeadLetters(ctx context.Context) ([]outbox.Dead, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, device_id, message_id, timestamp, payload, received_at, attempts, last_error, dead_at FROM deadletter ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer rows.Close()
	var out []outbox.Dead
	for rows.Next() {
		var d outbox.Dead
		var ms, dead int64
		if err := rows.Scan(&d.Seq, &d.DeviceID, &d.MessageID, &d.Timestamp, &d.Payload, &ms, &d.Attempts, &d.LastError, &dead); err != nil {
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
		d.ReceivedAt, d.DeadAt = time.UnixMilli(ms), time.Unix(dead, 0)
		out = append(out, d)
	}
	return out, rows.Err()
}

// RetryDead moves dead letters back into the outbox (all when seqs is
// empty), as new rows that a running gateway picks up, and returns how many.
func (s *Store) RetryDead(ctx context.Context, seqs []int64) (int, error) {
	return s.deadOp(ctx, seqs, true)
}

// DropDead deletes dead letters for good (all when seqs is empty).
func (s *Store) DropDead(ctx context.Context, seqs []int64) (int, error) {
	return s.deadOp(ctx, seqs, false)
}

func (s *Store) deadOp(ctx context.Context, seqs []int64, retry bool) (int, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck
	where, args := "", []any{}
	if len(seqs) > 0 {
		where = " WHERE seq IN (?" + strings.Repeat(",?", len(seqs)-1) + ")"
		for _, s := range seqs {
			args = append(args, s)
		}
	}
	if retry {
		//nolint:gosec // G202: only "?" placeholders are concatenated; every value is a bound parameter
		if _, err := tx.ExecContext(ctx, `INSERT INTO outbox(device_id, message_id, timestamp, payload, received_at)
			SELECT device_id, message_id, timestamp, payload, ? FROM deadletter`+where+` ORDER BY seq`,
			append([]any{time.Now().UnixMilli()}, args...)...); err != nil {
			return 0, fmt.Errorf("retry dead letters: %w", err)
		}
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM deadletter`+where, args...) //nolint:gosec // G202: only "?" placeholders are concatenated; every value is a bound parameter
	if err != nil {
		return 0, fmt.Errorf("remove dead letters: %w", err)
	}
	n, _ := res.RowsAffected()
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	return int(n), nil
}

// seenChunk is the most rows one INSERT INTO seen statement carries: one
// statement per chunk instead of one per row (4 parameters per row, well
// under SQLite's 32766 limit).
const seenChunk = 128

// insertSeen records the ids of recs in the seen table, seenChunk rows per
// statement; one with one1 (the prepared statement for one row).
func insertSeen(ctx context.Context, tx *sql.Tx, one1 *sql.Stmt, recs []*outbox.Record) error {
	args := make([]any, 0, 4*min(len(recs), seenChunk))
	for len(recs) > 0 {
		chunk := recs[:min(len(recs), seenChunk)]
		recs = recs[len(chunk):]
		args = args[:0]
		for _, r := range chunk {
			ts, err := strconv.ParseInt(r.Timestamp, 10, 64)
			if err != nil { // cannot happen for a validated message; keep the id longer, not shorter
				ts = r.Expires.Unix()
			}
			args = append(args, r.DeviceID, r.ID[:], r.Expires.Unix(), ts)
		}
		var err error
		if len(chunk) == 1 {
			err = execIn(ctx, tx, one1, args...)
		} else {
			q := `INSERT INTO seen(device_id, message_id, expires, ts) VALUES (?,?,?,?)` + strings.Repeat(",(?,?,?,?)", len(chunk)-1) //nolint:gosec // G202: only "?" placeholders are concatenated; every value is a bound parameter
			_, err = tx.ExecContext(ctx, q, args...)
		}
		if err != nil {
			return fmt.Errorf("insert seen: %w", err)
		}
	}
	return nil
}

// Stats reads the oldest pending row's receive time (by primary key, so it
// is one index lookup) and counts the dead letters.
func (s *Store) Stats(ctx context.Context) (outbox.Stats, error) {
	var st outbox.Stats
	var ms sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT (SELECT received_at FROM outbox ORDER BY seq LIMIT 1), (SELECT COUNT(*) FROM deadletter)`).
		Scan(&ms, &st.DeadLetters)
	if err != nil {
		return outbox.Stats{}, fmt.Errorf("outbox stats: %w", err)
	}
	if ms.Valid {
		st.Oldest = time.UnixMilli(ms.Int64)
	}
	return st, nil
}
