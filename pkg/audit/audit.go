package audit

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/sqldb"
	"github.com/iotgw/iotgw/pkg/internal/sqlitex"
)

// Entry is one audit record.
type Entry struct {
	// Seq is the entry's position in the chain, from 1; set by Append.
	Seq int64
	// At is when it happened, kept to the millisecond; Append sets a zero
	// At to its clock's now.
	At time.Time
	// Actor is who did it: "gateway", or "cli:<user>".
	Actor string
	// Device is the device concerned, or "".
	Device string
	// Action is what happened: "reject", "quarantine", "device.add", ...
	Action string
	// Reason is the rejection reason code, or "".
	Reason string
	// MessageID is the message concerned (a folded entry's first), or "".
	MessageID string
	// Count is how many events the entry stands for (repeated rejections
	// folded into one entry per second); 0 is stored as 1.
	Count int64
	// PrevHash and Hash chain the entry; set by Append.
	PrevHash, Hash [32]byte
}

// Field limits, in bytes: longer values are refused by Append.
const (
	maxActor = 128
	maxField = 128
)

// ErrBadEntry is returned by Append for an entry with an empty action or a
// field over its limit.
var ErrBadEntry = errors.New("bad audit entry")

// BrokenError is Verify's verdict on a chain that does not hold: Seq names
// the first broken entry.
type BrokenError struct {
	Seq    int64
	Reason string
}

func (e *BrokenError) Error() string { return fmt.Sprintf("audit entry %d: %s", e.Seq, e.Reason) }

// migrations is the audit trail's own schema track (audit_migrations).
// Never edit a released step: append a new one.
var migrations = []sqlitex.Migration{
	{Version: 1, SQL: `CREATE TABLE audit_log (
		seq        INTEGER PRIMARY KEY NOT NULL,
		at_ms      INTEGER NOT NULL,
		actor      TEXT NOT NULL,
		device     TEXT NOT NULL,
		action     TEXT NOT NULL,
		reason     TEXT NOT NULL,
		message_id TEXT NOT NULL,
		count      INTEGER NOT NULL,
		prev_hash  TEXT NOT NULL,
		hash       TEXT NOT NULL
	);
	CREATE TABLE audit_head (
		id   INTEGER PRIMARY KEY CHECK (id = 1),
		seq  INTEGER NOT NULL,
		hash TEXT NOT NULL
	)`},
}

// Log is the audit trail: in the registry's SQLite file (Open), or in a
// database shared by several gateways (OpenDB).
type Log struct {
	db    *sql.DB
	d     sqldb.Dialect
	owned bool // Close closes db
	now   func() time.Time
}

// Open opens the audit trail in the database at path (the registry file),
// creating its tables when missing. now is the clock for entries without
// a time (time.Now in production).
func Open(ctx context.Context, path string, now func() time.Time) (*Log, error) {
	if path == "" {
		return nil, errors.New("audit: database path is empty")
	}
	db, err := sqlitex.Open(path)
	if err != nil {
		return nil, err
	}
	if err := sqlitex.MigrateTable(ctx, db, "audit_migrations", migrations); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate audit tables in %s: %w", path, err)
	}
	return &Log{db: db, d: sqlitex.Dialect, owned: true, now: now}, nil
}

// OpenDB opens the audit trail in a database whose engine already created
// the audit_log and audit_head tables (with the column names and meanings
// of migrations), such as PostgreSQL's (package pgstore), with d its
// dialect. Any number of processes may append at once: each Append holds
// d's lock "audit" for its transaction. Close leaves db open: its owner
// closes it.
func OpenDB(_ context.Context, db *sql.DB, d sqldb.Dialect, now func() time.Time) (*Log, error) {
	if db == nil || d == nil {
		return nil, errors.New("audit: no database")
	}
	return &Log{db: db, d: d, now: now}, nil
}

// Close closes the database (a database given to OpenDB stays open).
func (l *Log) Close() error {
	if !l.owned {
		return nil
	}
	return l.db.Close()
}

// Hash returns e's hash over the canonical encoding described in the
// package documentation (e.Hash itself is not part of it).
func Hash(e *Entry) [32]byte {
	b := make([]byte, 0, 14+8+8+8+32+4*5+len(e.Actor)+len(e.Device)+len(e.Action)+len(e.Reason)+len(e.MessageID))
	b = append(b, "iotgw-audit-v1"...)
	// Seq and Count are encoded as 64-bit two's complement (the uint64
	// conversions reinterpret the bits, an injective map on int64), string
	// lengths as uint32: check caps fields at 128 bytes on Append, and rows
	// Verify reads back are SQLite values, below 2^31 bytes (its hard
	// limit), or PostgreSQL TEXT, at most 1 GB.
	b = binary.BigEndian.AppendUint64(b, uint64(e.Seq)) //nolint:gosec // G115: two's-complement encoding, not arithmetic
	b = binary.BigEndian.AppendUint64(b, uint64(e.At.UnixMilli()))
	for _, s := range []string{e.Actor, e.Device, e.Action, e.Reason, e.MessageID} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s))) //nolint:gosec // G115: lengths < 2^32, see above
		b = append(b, s...)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(e.Count)) //nolint:gosec // G115: two's-complement encoding, not arithmetic
	b = append(b, e.PrevHash[:]...)
	return sha256.Sum256(b)
}

func check(e *Entry) error {
	switch {
	case e.Action == "":
		return fmt.Errorf("%w: empty action", ErrBadEntry)
	case len(e.Actor) > maxActor:
		return fmt.Errorf("%w: actor longer than %d bytes", ErrBadEntry, maxActor)
	case len(e.Device) > maxField || len(e.Action) > maxField || len(e.Reason) > maxField || len(e.MessageID) > maxField:
		return fmt.Errorf("%w: a field is longer than %d bytes", ErrBadEntry, maxField)
	case e.Count < 0:
		return fmt.Errorf("%w: negative count", ErrBadEntry)
	}
	return nil
}

// Append adds entries to the end of the chain in one transaction, setting
// each one's Seq, PrevHash and Hash. Concurrent appenders in other
// processes wait their turn (SQLite: BEGIN IMMEDIATE, up to the busy
// timeout; elsewhere the dialect's lock "audit").
func (l *Log) Append(ctx context.Context, entries ...*Entry) error {
	for _, e := range entries {
		if err := check(e); err != nil {
			return err
		}
	}
	tx, err := l.db.BeginTx(ctx, nil) // _txlock=immediate in sqlitex's DSN
	if err != nil {
		return fmt.Errorf("audit append: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if err := l.d.LockTx(ctx, tx, "audit"); err != nil {
		return fmt.Errorf("audit append: %w", err)
	}
	var seq int64
	var head string
	err = tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`).Scan(&seq, &head)
	var prev [32]byte
	switch {
	case errors.Is(err, sql.ErrNoRows):
		var n int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM audit_log`).Scan(&n); err != nil {
			return fmt.Errorf("audit append: %w", err)
		}
		if n > 0 {
			return errors.New("audit append: audit_head is missing but audit_log has entries (run iotgw audit verify)")
		}
	case err != nil:
		return fmt.Errorf("audit append: read head: %w", err)
	default:
		if prev, err = parseHash(head); err != nil {
			return fmt.Errorf("audit append: head: %w", err)
		}
	}
	for _, e := range entries {
		seq++
		e.Seq, e.PrevHash = seq, prev
		if e.At.IsZero() {
			e.At = l.now()
		}
		e.At = time.UnixMilli(e.At.UnixMilli()).UTC()
		if e.Count == 0 {
			e.Count = 1
		}
		e.Hash = Hash(e)
		if _, err := tx.ExecContext(ctx, l.d.Rebind(`INSERT INTO audit_log(seq, at_ms, actor, device, action, reason, message_id, count, prev_hash, hash)
			VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`), e.Seq, e.At.UnixMilli(), e.Actor, e.Device, e.Action, e.Reason, e.MessageID, e.Count,
			hex.EncodeToString(e.PrevHash[:]), hex.EncodeToString(e.Hash[:])); err != nil {
			return fmt.Errorf("audit append: %w", err)
		}
		prev = e.Hash
	}
	if _, err := tx.ExecContext(ctx, l.d.Rebind(`INSERT INTO audit_head(id, seq, hash) VALUES(1, ?, ?)
		ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash`), seq, hex.EncodeToString(prev[:])); err != nil {
		return fmt.Errorf("audit append: move head: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("audit append: %w", err)
	}
	return nil
}

func parseHash(s string) ([32]byte, error) {
	var h [32]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 || hex.EncodeToString(b) != s {
		return h, fmt.Errorf("%q is not 64 lowercase hex characters", s)
	}
	copy(h[:], b)
	return h, nil
}

const columns = `seq, at_ms, actor, device, action, reason, message_id, count, prev_hash, hash`

func scan(rows *sql.Rows) (*Entry, string, string, error) {
	var e Entry
	var at int64
	var prev, hash string
	if err := rows.Scan(&e.Seq, &at, &e.Actor, &e.Device, &e.Action, &e.Reason, &e.MessageID, &e.Count, &prev, &hash); err != nil {
		return nil, "", "", err
	}
	e.At = time.UnixMilli(at).UTC()
	return &e, prev, hash, nil
}

// Tail returns the newest n entries, oldest first.
func (l *Log) Tail(ctx context.Context, n int) ([]*Entry, error) {
	rows, err := l.db.QueryContext(ctx, l.d.Rebind(`SELECT `+columns+` FROM audit_log ORDER BY seq DESC LIMIT ?`), n)
	if err != nil {
		return nil, fmt.Errorf("audit tail: %w", err)
	}
	defer rows.Close()
	var out []*Entry
	for rows.Next() {
		e, prev, hash, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("audit tail: %w", err)
		}
		e.PrevHash, _ = parseHash(prev) // shown as stored; Verify judges them
		e.Hash, _ = parseHash(hash)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("audit tail: %w", err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// ErrAnchorMismatch is returned by CheckAnchor when the chain no longer
// holds the recorded entry.
var ErrAnchorMismatch = errors.New("anchor not in the chain")

// CheckAnchor reports whether entry seq still has hash: an anchor recorded
// earlier (from `iotgw audit verify`) and kept elsewhere. Together with
// Verify it catches a consistent rewrite of the chain up to that entry.
func (l *Log) CheckAnchor(ctx context.Context, seq int64, hash [32]byte) error {
	var got string
	err := l.db.QueryRowContext(ctx, l.d.Rebind(`SELECT hash FROM audit_log WHERE seq = ?`), seq).Scan(&got)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: entry %d is gone", ErrAnchorMismatch, seq)
	}
	if err != nil {
		return fmt.Errorf("audit anchor: %w", err)
	}
	if got != hex.EncodeToString(hash[:]) {
		return fmt.Errorf("%w: entry %d has hash %s, the anchor says %x: the chain was rewritten", ErrAnchorMismatch, seq, got, hash)
	}
	return nil
}

// ParseAnchor parses "SEQ:HASH" (64 lowercase hex characters).
func ParseAnchor(s string) (int64, [32]byte, error) {
	seqText, hashText, ok := strings.Cut(s, ":")
	seq, err := strconv.ParseInt(seqText, 10, 64)
	if !ok || err != nil || seq < 1 {
		return 0, [32]byte{}, fmt.Errorf("anchor %q is not SEQ:HASH", s)
	}
	h, err := parseHash(hashText)
	if err != nil {
		return 0, [32]byte{}, fmt.Errorf("anchor %q: %w", s, err)
	}
	return seq, h, nil
}

// Verify checks the whole chain and returns how many entries it holds. A
// chain that does not hold is a *BrokenError naming the first broken
// entry; any other error is a database fault.
func (l *Log) Verify(ctx context.Context) (int64, error) {
	// One snapshot for the rows and the head (SQLite: any transaction;
	// PostgreSQL needs REPEATABLE READ, or an append between the two
	// reads would look like a broken head).
	tx, err := l.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("audit verify: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // read only
	rows, err := tx.QueryContext(ctx, `SELECT `+columns+` FROM audit_log ORDER BY seq`)
	if err != nil {
		return 0, fmt.Errorf("audit verify: %w", err)
	}
	defer rows.Close()
	var n, last int64
	var prev [32]byte
	for rows.Next() {
		e, prevHex, hashHex, err := scan(rows)
		if err != nil {
			return n, fmt.Errorf("audit verify: %w", err)
		}
		n++
		if e.Seq != last+1 {
			if last == 0 {
				return n, &BrokenError{e.Seq, fmt.Sprintf("the chain starts at seq %d, not 1: entries deleted before it", e.Seq)}
			}
			return n, &BrokenError{e.Seq, fmt.Sprintf("follows entry %d: entries deleted between them", last)}
		}
		if e.PrevHash, err = parseHash(prevHex); err != nil {
			return n, &BrokenError{e.Seq, "prev_hash: " + err.Error()}
		}
		if e.Hash, err = parseHash(hashHex); err != nil {
			return n, &BrokenError{e.Seq, "hash: " + err.Error()}
		}
		if e.PrevHash != prev {
			return n, &BrokenError{e.Seq, "prev_hash is not the previous entry's hash: an entry was inserted, deleted or rewritten"}
		}
		if Hash(e) != e.Hash {
			return n, &BrokenError{e.Seq, "hash does not match its fields: the entry was edited"}
		}
		last, prev = e.Seq, e.Hash
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("audit verify: %w", err)
	}
	var headSeq int64
	var headHex string
	err = tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`).Scan(&headSeq, &headHex)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if last != 0 {
			return n, &BrokenError{last, "audit_head is missing"}
		}
		return 0, nil
	case err != nil:
		return n, fmt.Errorf("audit verify: read head: %w", err)
	}
	if headSeq != last {
		first := last + 1 // entries after `last` were deleted
		if headSeq < last {
			first = headSeq + 1 // entries after the head were appended around it
		}
		return n, &BrokenError{first, fmt.Sprintf("the head names entry %d but the last entry is %d: entries deleted at the end, or appended without moving the head", headSeq, last)}
	}
	if headHex != hex.EncodeToString(prev[:]) {
		return n, &BrokenError{last, "the head's hash is not this entry's: the last entry was replaced"}
	}
	return n, nil
}
