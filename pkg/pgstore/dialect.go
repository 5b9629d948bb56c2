package pgstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/iotgw/iotgw/pkg/internal/sqldb"
)

// lockSpace is the first key of every advisory lock LockTx takes (the
// two-int4 key space, which never meets migrateLock's single bigint key).
const lockSpace int32 = 0x696f7467 // "iotg"

// Dialect is PostgreSQL's sqldb.Dialect, for a *sql.DB from SQLDB.
var Dialect sqldb.Dialect = dialect{}

type dialect struct{}

func (dialect) Name() string { return "postgres" }

func (dialect) Rebind(q string) string { return sqldb.Dollar(q) }

func (dialect) UniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" // unique_violation
}

// LockTx takes a transaction-scoped advisory lock on (lockSpace,
// hashtext(name)): every gateway and CLI sharing the database waits its
// turn, and the lock ends with tx.
func (dialect) LockTx(ctx context.Context, tx *sql.Tx, name string) error {
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockSpace, name); err != nil {
		return fmt.Errorf("lock %s: %w", name, err)
	}
	return nil
}

// ChangeVersion reads registry_version, which a trigger bumps on every
// statement that changes devices, device_keys or registry_meta.
func (dialect) ChangeVersion(ctx context.Context, conn *sql.Conn) (int64, error) {
	var v int64
	err := conn.QueryRowContext(ctx, `SELECT version FROM registry_version WHERE id = 1`).Scan(&v)
	return v, err
}

// Compact rewrites device_keys and registry_meta (VACUUM FULL), so the
// old tuples of re-sealed rows leave the table files. It takes an
// exclusive lock on them for the moment it runs. Copies in WAL archives
// and backups are beyond it.
func (dialect) Compact(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `VACUUM FULL device_keys, registry_meta`); err != nil {
		return fmt.Errorf("vacuum full: %w", err)
	}
	return nil
}

// SQLDB returns a database/sql handle on db's pool, for the packages that
// run portable SQL (registry, audit) with Dialect. Closing it leaves the
// pool open; close db for that.
func SQLDB(db *DB) *sql.DB { return stdlib.OpenDBFromPool(db.Pool) }
