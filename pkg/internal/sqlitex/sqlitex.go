// Package sqlitex opens SQLite databases the way iotgw wants them (WAL, a
// busy timeout, files created 0600) and applies versioned migrations.
package sqlitex

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver
)

// Migration is one versioned schema step. Versions start at 1, are applied
// in order inside one transaction each, and are never edited once released.
type Migration struct {
	Version int
	SQL     string
}

// Open opens a SQLite file in WAL mode with a busy timeout, creating
// it 0600 when missing, and failing clearly when its directory is missing.
func Open(path string) (*sql.DB, error) { return OpenSync(path, "NORMAL") }

// OpenSync is Open with the given PRAGMA synchronous level (NORMAL or FULL).
// In WAL mode NORMAL survives a process crash; FULL also survives power loss.
func OpenSync(path, synchronous string) (*sql.DB, error) {
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("database directory %s does not exist", dir)
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600) //nolint:gosec // G304: the database path is the operator's config (registry.path, outbox.path)
		if err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create database %s: %w", path, err)
		}
		if f != nil {
			f.Close()
		}
	}
	// _stmt_cache_size keeps each connection's prepared statements for
	// reuse: the same few statements run again and again (the writer's
	// commit, the registry's change check every second), and preparing one
	// cost as much as running it (docs/PERFORMANCE.md, "Idle").
	dsn := "file:" + path + "?_journal_mode=WAL&_busy_timeout=5000&_synchronous=" + synchronous + "&_txlock=immediate&_stmt_cache_size=32"
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	return db, nil
}

// Migrate applies every migration newer than the database's version,
// recorded in schema_migrations.
func Migrate(ctx context.Context, db *sql.DB, ms []Migration) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return err
	}
	var cur int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&cur); err != nil {
		return err
	}
	if len(ms) > 0 && cur > ms[len(ms)-1].Version {
		return fmt.Errorf("database schema version %d is newer than this binary knows (%d)", cur, ms[len(ms)-1].Version)
	}
	for _, m := range ms {
		if m.Version <= cur {
			continue
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			_ = tx.Rollback() // the migration error is the one to report
			return fmt.Errorf("migration %d: %w", m.Version, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES(?, ?)`, m.Version, time.Now().Unix()); err != nil {
			_ = tx.Rollback() // the migration error is the one to report
			return fmt.Errorf("migration %d: %w", m.Version, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", m.Version, err)
		}
	}
	return nil
}

// MigrateTable is Migrate with its own tracking table, so that one database
// file can hold several independent migration tracks (the registry's in
// schema_migrations, the audit trail's in audit_migrations). table must be
// a plain identifier.
func MigrateTable(ctx context.Context, db *sql.DB, table string, ms []Migration) error {
	if !identifier(table) {
		return fmt.Errorf("migration table %q is not a plain identifier", table)
	}
	// table is a checked identifier (above), so building SQL with it is safe.
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil { //nolint:gosec // checked identifier
		return err
	}
	for _, m := range ms {
		if err := migrateStep(ctx, db, table, m, ms[len(ms)-1].Version); err != nil {
			return err
		}
	}
	return nil
}

// migrateStep applies m unless the database is already at m.Version or
// later. One transaction per step, and the version read inside it (BEGIN
// IMMEDIATE), so two processes migrating at once apply each step exactly
// once. latest is the newest version this binary knows.
func migrateStep(ctx context.Context, db *sql.DB, table string, m Migration, latest int) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		// After Commit, Rollback is a no-op returning sql.ErrTxDone.
		if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
			err = errors.Join(err, fmt.Errorf("%s migration %d: rollback: %w", table, m.Version, rerr))
		}
	}()
	var cur int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM `+table).Scan(&cur); err != nil { //nolint:gosec // checked identifier
		return err
	}
	if cur > latest {
		return fmt.Errorf("%s: database schema version %d is newer than this binary knows (%d)", table, cur, latest)
	}
	if m.Version <= cur {
		return nil
	}
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return fmt.Errorf("%s migration %d: %w", table, m.Version, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+table+`(version, applied_at) VALUES(?, ?)`, m.Version, time.Now().Unix()); err != nil { //nolint:gosec // checked identifier
		return fmt.Errorf("%s migration %d: %w", table, m.Version, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s migration %d: %w", table, m.Version, err)
	}
	return nil
}

func identifier(s string) bool {
	if s == "" || len(s) > 64 || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
