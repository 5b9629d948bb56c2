package audit

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Filter selects entries for Find and Summarize. A zero field matches
// every entry.
type Filter struct {
	// Device is the device concerned.
	Device string
	// Reason is the rejection reason code.
	Reason string
	// Since is the earliest time (inclusive).
	Since time.Time
}

// where returns the SQL condition of f (with ? placeholders) and its
// arguments.
func (f Filter) where() (string, []any) {
	var conds []string
	var args []any
	if f.Device != "" {
		conds, args = append(conds, "device = ?"), append(args, f.Device)
	}
	if f.Reason != "" {
		conds, args = append(conds, "reason = ?"), append(args, f.Reason)
	}
	if !f.Since.IsZero() {
		conds, args = append(conds, "at_ms >= ?"), append(args, f.Since.UnixMilli())
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// Find returns the newest n entries that match f, oldest first. It reads
// the whole trail when nothing narrows it down (no index on device or
// reason): fine for an operator's query, not for a hot path.
func (l *Log) Find(ctx context.Context, f Filter, n int) ([]*Entry, error) {
	w, args := f.where()
	rows, err := l.db.QueryContext(ctx, l.d.Rebind(`SELECT `+columns+` FROM audit_log`+w+` ORDER BY seq DESC LIMIT ?`), append(args, n)...)
	if err != nil {
		return nil, fmt.Errorf("audit find: %w", err)
	}
	defer rows.Close()
	var out []*Entry
	for rows.Next() {
		e, prev, hash, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("audit find: %w", err)
		}
		e.PrevHash, _ = parseHash(prev) // shown as stored; Verify judges them
		e.Hash, _ = parseHash(hash)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("audit find: %w", err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// Tally is the events of one action and reason in a Summarize.
type Tally struct {
	// Action and Reason are the entries' ("reject", "bad_signature").
	Action, Reason string
	// Count is the sum of the entries' counts (folded rejections).
	Count int64
	// Last is the newest entry's time.
	Last time.Time
}

// Summarize returns the events that match f by action and reason, most
// recent first.
func (l *Log) Summarize(ctx context.Context, f Filter) ([]Tally, error) {
	w, args := f.where()
	rows, err := l.db.QueryContext(ctx, l.d.Rebind(`SELECT action, reason, SUM(count), MAX(at_ms) FROM audit_log`+w+
		` GROUP BY action, reason ORDER BY MAX(at_ms) DESC, action, reason`), args...)
	if err != nil {
		return nil, fmt.Errorf("audit summary: %w", err)
	}
	defer rows.Close()
	var out []Tally
	for rows.Next() {
		var t Tally
		var last int64
		if err := rows.Scan(&t.Action, &t.Reason, &t.Count, &last); err != nil {
			return nil, fmt.Errorf("audit summary: %w", err)
		}
		t.Last = time.UnixMilli(last).UTC()
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("audit summary: %w", err)
	}
	return out, nil
}
