// Package pgstore is the PostgreSQL storage engine: one database shared by
// every gateway of a deployment, holding the registry (secrets sealed as
// on SQLite), the audit chain, the outbox, the replay ids, the forwarding
// leases and the dead letters. It is chosen in one place, package storage;
// no pipeline stage imports it.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrateLock is the advisory lock key held while migrating, so that
// gateways starting together migrate one at a time.
const migrateLock int64 = 0x696f7467770001 // "iotgw" 0001

// DB is an open PostgreSQL store.
type DB struct {
	Pool *pgxpool.Pool
	cfg  *pgxpool.Config
}

// Open connects to dsn and applies pending migrations (Migrate). The DSN
// is never echoed in an error: it may hold a password.
func Open(ctx context.Context, dsn string) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("storage.dsn: not a valid PostgreSQL connection string (see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING)")
	}
	cfg.MaxConns = max(cfg.MaxConns, 8)
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("storage: postgres: %w", err)
	}
	db := &DB{Pool: pool, cfg: cfg}
	if err := db.Migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return db, nil
}

// Close closes every connection.
func (db *DB) Close() { db.Pool.Close() }

// Version returns the schema version applied and the latest this build knows.
func (db *DB) Version(ctx context.Context) (applied, latest int, err error) {
	err = db.Pool.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM iotgw_migrations`).Scan(&applied)
	return applied, len(migrations) - 1, err
}

// Migrate applies pending migrations under an advisory lock, each in its
// own transaction. A database migrated by a newer build is refused.
func (db *DB) Migrate(ctx context.Context) error {
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("storage: postgres: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrateLock); err != nil {
		return fmt.Errorf("storage: postgres: migration lock: %w", err)
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, migrateLock) //nolint:errcheck // the session ends with the connection anyway
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS iotgw_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("storage: postgres: migrate: %w", err)
	}
	var applied int
	if err := conn.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM iotgw_migrations`).Scan(&applied); err != nil {
		return fmt.Errorf("storage: postgres: migrate: %w", err)
	}
	latest := len(migrations) - 1
	if applied > latest {
		return fmt.Errorf("storage: postgres: schema version %d is newer than this iotgw knows (%d): upgrade iotgw", applied, latest)
	}
	for v := applied + 1; v <= latest; v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO iotgw_migrations(version) VALUES ($1)`, v)
			return err
		})
		if err != nil {
			return fmt.Errorf("storage: postgres: migration %d: %w", v, err)
		}
	}
	return nil
}
