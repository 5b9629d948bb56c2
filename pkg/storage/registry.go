package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/iotgw/iotgw/pkg/audit"
	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/registry"
)

// Describe names where the registry of c lives, for messages: the SQLite
// file path, or "postgres" (never the DSN: it may hold a password).
func (c Config) Describe(path string) string {
	if c.Engine == Postgres {
		return "postgres (storage.dsn)"
	}
	return path
}

// RegistryExists reports a registry that is not there yet: a missing
// SQLite file (only iotgw device add creates one, so that a typo in the
// path is not mistaken for an empty registry), as an error wrapping
// os.ErrNotExist. A PostgreSQL registry always exists: opening it creates
// its schema.
func (c Config) RegistryExists(path string) error {
	if c.Engine == Postgres {
		return nil
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("registry %s does not exist (iotgw device add creates it): %w", path, os.ErrNotExist)
	}
	return nil
}

// OpenRegistry opens the registry of c: the SQLite file at path (engine
// sqlite, created when missing, as registry.Open does), or the PostgreSQL
// database storage.dsn (engine postgres: connected and migrated here;
// path is unused). The returned func closes the registry and whatever was
// opened for it.
func OpenRegistry(ctx context.Context, c Config, path string, opts ...registry.Option) (*registry.Registry, func() error, error) {
	if c.Engine != Postgres {
		r, err := registry.Open(ctx, path, opts...)
		if err != nil {
			return nil, nil, err
		}
		return r, r.Close, nil
	}
	db, err := pgstore.Open(ctx, c.DSN)
	if err != nil {
		return nil, nil, err
	}
	r, closeReg, err := RegistryOn(ctx, db, opts...)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return r, func() error { err := closeReg(); db.Close(); return err }, nil
}

// RegistryOn opens the registry in the open PostgreSQL store db (a gateway
// shares one pool between registry, audit and outbox). The returned func
// closes the registry, not db.
func RegistryOn(ctx context.Context, db *pgstore.DB, opts ...registry.Option) (*registry.Registry, func() error, error) {
	sdb := pgstore.SQLDB(db)
	r, err := registry.OpenDB(ctx, sdb, pgstore.Dialect, opts...)
	if err != nil {
		sdb.Close()
		return nil, nil, err
	}
	return r, func() error { return errors.Join(r.Close(), sdb.Close()) }, nil
}

// OpenAudit opens the audit trail of c: in the registry's SQLite file at
// path (engine sqlite), or in the PostgreSQL database storage.dsn. The
// returned func closes it and whatever was opened for it.
func OpenAudit(ctx context.Context, c Config, path string, now func() time.Time) (*audit.Log, func() error, error) {
	if c.Engine != Postgres {
		l, err := audit.Open(ctx, path, now)
		if err != nil {
			return nil, nil, err
		}
		return l, l.Close, nil
	}
	db, err := pgstore.Open(ctx, c.DSN)
	if err != nil {
		return nil, nil, err
	}
	l, closeLog, err := AuditOn(ctx, db, now)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return l, func() error { err := closeLog(); db.Close(); return err }, nil
}

// AuditOn opens the audit trail in the open PostgreSQL store db. The
// returned func closes the log, not db.
func AuditOn(ctx context.Context, db *pgstore.DB, now func() time.Time) (*audit.Log, func() error, error) {
	sdb := pgstore.SQLDB(db)
	l, err := audit.OpenDB(ctx, sdb, pgstore.Dialect, now)
	if err != nil {
		sdb.Close()
		return nil, nil, err
	}
	return l, func() error { return errors.Join(l.Close(), sdb.Close()) }, nil
}

// DeviceSecrets returns each device's newest secret from the registry of
// c (see registry.DeviceSecrets: the SQLite file at path is opened
// read-only), opened with kek when the registry is sealed. For the tools
// that play the devices (iotgw sim).
func DeviceSecrets(ctx context.Context, c Config, path string, kek *registry.KEK) (map[string][]byte, error) {
	if c.Engine != Postgres {
		return registry.DeviceSecrets(ctx, path, kek)
	}
	db, err := pgstore.Open(ctx, c.DSN)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	sdb := pgstore.SQLDB(db)
	defer sdb.Close()
	return registry.DeviceSecretsDB(ctx, sdb, pgstore.Dialect, kek)
}
