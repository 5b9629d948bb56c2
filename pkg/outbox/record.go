package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Config holds the outbox settings.
type Config struct {
	// Path is the SQLite file. Default "iotgw-outbox.db".
	Path string `mapstructure:"path"`
	// MaxPending bounds rows waiting for the backend; past it new messages
	// are not acked, so the broker holds them. Default 100000.
	MaxPending int `mapstructure:"max_pending"`
	// MaxPendingPerDevice bounds the rows any one device may have waiting
	// for the backend; past it that device's new messages are refused with
	// reason quota_exceeded (acked, counted, answered with a notice) while
	// other devices' messages are still accepted, so one device cannot fill
	// the outbox for the fleet. 0 turns the quota off. Default 10000.
	MaxPendingPerDevice int `mapstructure:"max_pending_per_device"`
	// BatchMax is the most messages committed in one transaction. Default 512.
	BatchMax int `mapstructure:"batch_max"`
	// CommitLinger is the longest a message waits for others to share its
	// commit (and its fsync) with, while messages arrive closer together
	// than this (see Writer). 0 commits every batch at once. Default 2ms.
	CommitLinger time.Duration `mapstructure:"commit_linger"`
	// PruneInterval is how often expired seen ids are deleted. Default 30s.
	PruneInterval time.Duration `mapstructure:"prune_interval"`
	// Synchronous is SQLite's PRAGMA synchronous: "full" (default) makes a
	// commit survive power loss; "normal" survives a process crash only.
	Synchronous string `mapstructure:"synchronous"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Path: "iotgw-outbox.db", MaxPending: 100000, MaxPendingPerDevice: 10000, BatchMax: 512, CommitLinger: 2 * time.Millisecond, PruneInterval: 30 * time.Second, Synchronous: "full"}
}

// Validate checks the settings.
func (c Config) Validate() error {
	switch {
	case c.Path == "":
		return errors.New("outbox.path: required")
	case c.MaxPending < 1:
		return fmt.Errorf("outbox.max_pending: must be at least 1, got %d", c.MaxPending)
	case c.MaxPendingPerDevice < 0 || c.MaxPendingPerDevice > c.MaxPending:
		return fmt.Errorf("outbox.max_pending_per_device: must be 0 (off) or 1..outbox.max_pending (%d), got %d", c.MaxPending, c.MaxPendingPerDevice)
	case c.BatchMax < 1 || c.BatchMax > 10000:
		return fmt.Errorf("outbox.batch_max: must be 1..10000, got %d", c.BatchMax)
	case c.CommitLinger < 0 || c.CommitLinger > 100*time.Millisecond:
		return fmt.Errorf("outbox.commit_linger: must be 0..100ms, got %s", c.CommitLinger)
	case c.PruneInterval <= 0:
		return errors.New("outbox.prune_interval: must be positive")
	case !strings.EqualFold(c.Synchronous, "full") && !strings.EqualFold(c.Synchronous, "normal"):
		return fmt.Errorf("outbox.synchronous: must be full or normal, got %q", c.Synchronous)
	}
	return nil
}

// Record is one accepted message.
type Record struct {
	// Seq is the row id, set by Insert.
	Seq int64
	// DSeq orders a device's rows: increasing in commit order per device
	// (on SQLite it is Seq; on PostgreSQL a per-device counter). The
	// backend sees it as X-Iotgw-Seq.
	DSeq int64
	// DeviceID and MessageID as received. Timestamp is the message's
	// freshness proof as received: the timestamp's digits, or, for a
	// counter-mode message, CounterMark and the counter's digits (see
	// Counter). Every engine stores it as it is, in its timestamp column.
	DeviceID, MessageID, Timestamp string
	// ID is the message id as 16 bytes, for the seen table; a
	// counter-mode message has no seen row, and ID is CounterID of its
	// counter (the key its copies in flight are matched by).
	ID [16]byte
	// Payload is the exact payload bytes.
	Payload []byte
	// ReceivedAt is when the gateway accepted it.
	ReceivedAt time.Time
	// Expires is when the id leaves the replay window.
	Expires time.Time
	// KeyID is the id of the device key the message verified with. A
	// counter-mode record whose KeyID is below its device's reset floor
	// (the key that `iotgw device reset-counter` issued) is refused as a
	// replay: a gateway whose registry cache still holds the old key must
	// not accept the old key's messages against the reset bound.
	KeyID int64
}

// CounterMark opens Record.Timestamp of a counter-mode message: "c42" is
// counter 42. A timestamp is digits only, so the two never mix.
const CounterMark = "c"

// CounterTimestamp returns Record.Timestamp for a counter-mode message
// whose counter's digits are digits.
func CounterTimestamp(digits []byte) string { return CounterMark + string(digits) }

// Counter returns the record's counter and true for a counter-mode
// message, or 0 and false for a timestamp-mode one.
func (r *Record) Counter() (int64, bool) { return ParseCounter(r.Timestamp) }

// ParseCounter reads a stored freshness proof (Record.Timestamp): the
// counter and true for CounterMark and digits, else 0 and false.
func ParseCounter(ts string) (int64, bool) {
	digits, ok := strings.CutPrefix(ts, CounterMark)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// CounterID is the in-flight key of a counter-mode message (Record.ID):
// its copies carry the same counter, whatever their message id. Keys are
// per device, and a device has one freshness mode, so it meets no
// timestamp-mode id (eight 0xff bytes do not open a random UUID but once
// in 2^64).
func CounterID(counter int64) [16]byte {
	var id [16]byte
	for i := range 8 {
		id[i] = 0xff
	}
	binary.BigEndian.PutUint64(id[8:], uint64(counter)) //nolint:gosec // G115: a bit pattern, not arithmetic
	return id
}

// Dead is a dead-lettered message.
type Dead struct {
	Record
	Attempts  int
	LastError string
	DeadAt    time.Time
}

// ErrNoRow is returned by Payload for a row that is not in the outbox.
var ErrNoRow = errors.New("no such outbox row")

// Rows is what ScanSeen reads: *sql.Rows, or pgx.Rows of another engine.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// ScanSeen calls fn for each (device_id, message_id, expires as Unix
// seconds) row of rows: the query of Seen, on any engine.
func ScanSeen(rows Rows, fn func(deviceID string, id [16]byte, expires time.Time) error) error {
	for rows.Next() {
		var dev string
		var id []byte
		var exp int64
		if err := rows.Scan(&dev, &id, &exp); err != nil {
			return fmt.Errorf("load seen: %w", err)
		}
		var k [16]byte
		copy(k[:], id)
		if err := fn(dev, k, time.Unix(exp, 0)); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Stats is what the gateway's /metrics reports about the database.
type Stats struct {
	// Oldest is when the oldest pending row was received; zero when the
	// outbox is empty.
	Oldest time.Time
	// DeadLetters is how many rows wait in the dead-letter table.
	DeadLetters int
}

// LastAccepted is the later of a pending row's receive time (Unix ms) and
// a replay id's message timestamp (Unix s), zero when both are 0: what an
// engine has on record of a device's last accepted message.
func LastAccepted(receivedMS, idTS int64) time.Time {
	var t time.Time
	if receivedMS > 0 {
		t = time.UnixMilli(receivedMS)
	}
	if idTS > 0 && time.Unix(idTS, 0).After(t) {
		t = time.Unix(idTS, 0)
	}
	return t
}
