// Package sqldb is what the registry and the audit trail need to know
// about the SQL engine under them, and nothing more: a Dialect. Each
// engine implements it in its own package (sqlitex for SQLite, pgstore for
// PostgreSQL); the stages write portable SQL with ? placeholders and bound
// parameters, and ask the Dialect for the rest.
package sqldb

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
)

// Dialect is one SQL engine's differences, as the registry and the audit
// trail see them. Implementations are stateless and safe for concurrent use.
type Dialect interface {
	// Name names the engine in messages ("sqlite", "postgres").
	Name() string
	// Rebind rewrites a query written with ? placeholders into the
	// engine's own (PostgreSQL: $1, $2, ...).
	Rebind(q string) string
	// UniqueViolation reports whether err is a primary-key or unique
	// constraint violation.
	UniqueViolation(err error) bool
	// LockTx takes the lock called name until tx ends, so writers in every
	// process that share the database take turns (the audit chain's head,
	// the registry's key ids). It is a no-op where every write
	// transaction already excludes the others (SQLite's BEGIN IMMEDIATE).
	LockTx(ctx context.Context, tx *sql.Tx, name string) error
	// ChangeVersion returns a number that changes whenever any process
	// commits a change to the registry tables. It is read on conn, a
	// connection the caller keeps for this (SQLite's PRAGMA data_version
	// is per connection); a caller that gets an error drops conn and
	// takes a fresh one.
	ChangeVersion(ctx context.Context, conn *sql.Conn) (int64, error)
	// Compact rewrites the registry tables' storage, so that the old
	// versions of rewritten rows (secrets before a re-seal) do not linger
	// in free pages. It runs outside any transaction.
	Compact(ctx context.Context, db *sql.DB) error
}

// Dollar rewrites the ? placeholders of q into $1, $2, ... in order,
// leaving ? inside quoted strings, quoted identifiers and comments alone.
func Dollar(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 8)
	n := 0
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'' || c == '"':
			j := strings.IndexByte(q[i+1:], c)
			if j < 0 {
				b.WriteString(q[i:])
				return b.String()
			}
			b.WriteString(q[i : i+j+2])
			i += j + 1
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				b.WriteString(q[i:])
				return b.String()
			}
			b.WriteString(q[i : i+j+1])
			i += j
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
