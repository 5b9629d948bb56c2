package sqlitex

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/iotgw/iotgw/pkg/internal/sqldb"
)

// Dialect is SQLite's sqldb.Dialect, for databases opened with Open.
var Dialect sqldb.Dialect = dialect{}

type dialect struct{}

func (dialect) Name() string { return "sqlite" }

// Rebind returns q: SQLite takes ? placeholders.
func (dialect) Rebind(q string) string { return q }

func (dialect) UniqueViolation(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && (se.ExtendedCode == sqlite3.ErrConstraintPrimaryKey || se.ExtendedCode == sqlite3.ErrConstraintUnique)
}

// LockTx does nothing: Open's DSN begins every transaction IMMEDIATE, so a
// writer already excludes every other writer, in any process.
func (dialect) LockTx(context.Context, *sql.Tx, string) error { return nil }

// ChangeVersion is PRAGMA data_version, which changes on conn when another
// connection commits (not when conn itself does).
func (dialect) ChangeVersion(ctx context.Context, conn *sql.Conn) (int64, error) {
	var v int64
	err := conn.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v)
	return v, err
}

// Compact vacuums the file and truncates its WAL.
func (dialect) Compact(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `VACUUM`); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	if _, err := db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		return fmt.Errorf("wal checkpoint: %w", err)
	}
	return nil
}
