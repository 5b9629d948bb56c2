package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
)

// Outbox is the outbox on either engine: what the gateway and the CLI use.
type Outbox interface {
	outbox.Committer
	Seen(ctx context.Context, now time.Time, window time.Duration, fn func(deviceID string, id [16]byte, expires time.Time) error) error
	// FreshnessWindow agrees on the replay window (validation.max_clock_skew)
	// with the engine: a shared one keeps one value for the whole fleet and
	// refuses another; SQLite's single gateway takes whatever it is given.
	FreshnessWindow(ctx context.Context, skew time.Duration) error
	SeenHorizon(ctx context.Context) (time.Time, error)
	PruneSeen(ctx context.Context, now time.Time, window time.Duration) (int64, error)
	PendingMeta(ctx context.Context) ([]*outbox.Record, error)
	Payload(ctx context.Context, seq int64) ([]byte, error)
	Bury(ctx context.Context, seq int64, attempts int, lastErr string, now time.Time) error
	Stats(ctx context.Context) (outbox.Stats, error)
	Count(ctx context.Context) (int, error)
	DeadLetters(ctx context.Context) ([]outbox.Dead, error)
	RetryDead(ctx context.Context, seqs []int64) (int, error)
	DropDead(ctx context.Context, seqs []int64) (int, error)
}

// Shared is what an engine shared by several gateways adds: rows are not
// owned by the gateway that accepted them but claimed under a lease by
// whichever forwards them (lease.Store, see pgstore.Outbox).
type Shared interface {
	lease.Store
	// Listen calls handlers[channel] on each notification of its channel
	// until ctx ends, reconnecting after errors (reported to onErr).
	Listen(ctx context.Context, handlers map[string]func(), onErr func(error))
}

// Engine is an open storage engine.
type Engine struct {
	Outbox Outbox
	// Shared is nil on SQLite.
	Shared Shared
	// Wakeups is the channel whose notifications mean "new rows", and
	// RegistryChanges the one that means "the registry changed" (Shared only).
	Wakeups, RegistryChanges string
	// PG is the PostgreSQL engine's database (nil on SQLite), for
	// RegistryOn and AuditOn.
	PG      *pgstore.DB
	closers []func()
}

// Close releases everything Open opened, in reverse order.
func (e *Engine) Close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

// OpenOutbox opens the outbox of cfg's engine. On SQLite it first takes the
// outbox lock (one gateway per file) and fails with an error naming
// outbox.path; on PostgreSQL it connects and migrates, naming storage.dsn.
func OpenOutbox(ctx context.Context, cfg Config, oc outbox.Config) (*Engine, error) {
	e := &Engine{}
	switch cfg.Engine {
	case Postgres:
		db, err := pgstore.Open(ctx, cfg.DSN)
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, db.Close)
		o := db.Outbox(oc.MaxPendingPerDevice)
		e.Outbox, e.Shared, e.PG = o, o, db
		e.Wakeups, e.RegistryChanges = pgstore.OutboxChannel, pgstore.RegistryChannel
	default:
		unlock, err := sqlitestore.Lock(oc.Path)
		if err != nil {
			return nil, fmt.Errorf("outbox.path: %w", err)
		}
		e.closers = append(e.closers, unlock)
		s, err := sqlitestore.Open(ctx, oc)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("outbox.path: %w", err)
		}
		e.closers = append(e.closers, func() { s.Close() })
		e.Outbox = s
	}
	return e, nil
}

// ErrOneGateway is returned by fleet-wide settings on an engine that
// serves one gateway (SQLite), whose settings are its own config's.
var ErrOneGateway = errors.New("storage.engine sqlite serves one gateway: its freshness window is its own validation.max_clock_skew (change it there and restart)")

// SetFreshnessWindow changes the freshness window of every gateway sharing
// cfg's database (iotgw fleet set-skew) and returns the previous one (0 if
// none was set). On SQLite it fails with ErrOneGateway.
func SetFreshnessWindow(ctx context.Context, cfg Config, skew time.Duration) (time.Duration, error) {
	if cfg.Engine != Postgres {
		return 0, ErrOneGateway
	}
	db, err := pgstore.Open(ctx, cfg.DSN)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	return db.Outbox(0).SetFreshnessWindow(ctx, skew)
}
