// Package storage is the one place that chooses the storage engine:
// SQLite files on the gateway's own disk (the default) or one PostgreSQL
// database shared by several gateways (package pgstore). Nothing else
// looks at Config.Engine; the stages see only the interfaces they declare.
package storage

import (
	"errors"
	"fmt"
	"time"

	"github.com/iotgw/iotgw/pkg/pgstore"
)

// Engines.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
)

// Config is the storage section.
type Config struct {
	// Engine is "sqlite" (default: registry.path and outbox.path, one
	// gateway) or "postgres" (storage.dsn, any number of gateways).
	Engine string `mapstructure:"engine"`
	// DSN is the PostgreSQL connection string (URL or key=value), for
	// engine postgres. Keep the password out of it: libpq's PGPASSFILE
	// or PGPASSWORD are read too. Never logged.
	DSN string `mapstructure:"dsn"`
	// Lease is how long a gateway owns a device's pending rows without
	// renewing (engine postgres): a gateway that dies has its rows taken
	// over by another within this. It renews every Lease/4 and stops
	// posting a device's rows once its lease may have run out. Must exceed
	// twice backend.timeout. Default 30s.
	Lease time.Duration `mapstructure:"lease"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{Engine: SQLite, Lease: 30 * time.Second} }

// PlaintextWarning returns one line for the operator when storage.dsn
// lets the connection to a remote PostgreSQL host run without verified
// TLS (pgstore.PlaintextWarning), and "" otherwise (and for SQLite).
func (c Config) PlaintextWarning() string {
	if c.Engine != Postgres {
		return ""
	}
	return pgstore.PlaintextWarning(c.DSN)
}

// FileUnused returns an error naming setting (a flag or key that names a
// SQLite file) when c's engine keeps no such file, and nil on SQLite.
func (c Config) FileUnused(setting string) error {
	if c.Engine == SQLite {
		return nil
	}
	return fmt.Errorf("%s names a SQLite file, but storage.engine is %s (drop %s)", setting, c.Engine, setting)
}

// FilesLocal reports whether the registry and the outbox are files of this
// gateway's (SQLite) rather than one database shared by several.
func (c Config) FilesLocal() bool { return c.Engine == SQLite }

// Shared reports whether the engine is shared by several gateways.
func (c Config) Shared() bool { return c.Engine == Postgres }

// ValidatePOST checks the lease against the longest POST
// (backend.timeout): on an engine whose rows are leased, a POST must end
// well inside the lease.
func (c Config) ValidatePOST(timeout time.Duration) error {
	if c.Shared() && c.Lease < 2*timeout {
		return fmt.Errorf("storage.lease: must be at least twice backend.timeout (%s), got %s: a POST must end well inside the lease", timeout, c.Lease)
	}
	return nil
}

// Validate checks the settings.
func (c Config) Validate() error {
	switch c.Engine {
	case SQLite:
		if c.DSN != "" {
			return errors.New("storage.dsn: set, but storage.engine is sqlite (set storage.engine: postgres, or remove storage.dsn)")
		}
	case Postgres:
		if c.DSN == "" {
			return errors.New("storage.dsn: required with storage.engine postgres")
		}
	default:
		return fmt.Errorf("storage.engine: must be sqlite or postgres, got %q", c.Engine)
	}
	if c.Lease < 2*time.Second || c.Lease > 10*time.Minute {
		return fmt.Errorf("storage.lease: must be 2s..10m, got %s", c.Lease)
	}
	return nil
}
