package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/iotgw/iotgw/pkg/audit"
	"github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/registry"
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
	// LastAccepted is when a device's newest message still on record (a
	// pending row or a replay id) was accepted, or zero.
	LastAccepted(ctx context.Context, device string) (time.Time, error)
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
	// CounterBound is the highest counter a counter-mode device had
	// accepted (0: none), and ResetCounter sets it back to 0 and the
	// device's reset floor to minKey (messages verified with an older key
	// are refused), returning the old bound (iotgw device reset-counter).
	CounterBound(ctx context.Context, device string) (int64, error)
	ResetCounter(ctx context.Context, device string, minKey int64) (int64, error)
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
	// Shared is nil on an engine that serves one gateway (SQLite).
	Shared Shared
	// Local is true on an engine that serves one gateway: its rows, its
	// per-device quota and its outbox bound are this gateway's alone (on a
	// shared engine the database enforces the quota fleet-wide, and a row
	// leaves this gateway's bound once committed: any gateway forwards it).
	Local bool
	// Registry is the device registry, when opened with Open.
	Registry *registry.Registry
	// Wakeups is the channel whose notifications mean "new rows", and
	// RegistryChanges the one that means "the registry changed" (Shared only).
	Wakeups, RegistryChanges string
	pg                       *pgstore.DB        // the shared database (nil on SQLite)
	sqlite                   *sqlitestore.Store // the SQLite outbox (nil on PostgreSQL)
	openOutbox               func(ctx context.Context) error
	// audit opens the audit trail beside the registry.
	audit   func(ctx context.Context, now func() time.Time) (*audit.Log, func() error, error)
	closers []func()
}

// Close releases everything Open opened, in reverse order.
func (e *Engine) Close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

// OpenAudit opens the audit trail beside the registry (Open only): in the
// registry's SQLite file, or in the shared database, on its pool. The
// returned func closes it.
func (e *Engine) OpenAudit(ctx context.Context, now func() time.Time) (*audit.Log, func() error, error) {
	return e.audit(ctx, now)
}

// Open opens the registry of cfg's engine for a gateway, and on a shared
// engine the database's pool, which the registry, the audit trail
// (OpenAudit) and the outbox (Engine.OpenOutbox) then share. On SQLite the
// registry is the file registryPath, which must exist: only iotgw device
// add creates a registry, and one created empty here by a typo in the
// path would reject every device as unknown. Each error names the setting
// at fault. The outbox is opened apart, so that a gateway reports a bad
// registry before it takes the outbox, and iotgw config check opens the
// registry as serve does without touching a running gateway's outbox.
func Open(ctx context.Context, cfg Config, oc outbox.Config, registryPath string, opts ...registry.Option) (*Engine, error) {
	if cfg.Engine == Postgres {
		e, err := OpenOutbox(ctx, cfg, oc) // no I/O beyond the pool: the outbox is the database's
		if err != nil {
			return nil, err
		}
		db := e.pg
		reg, closeReg, err := RegistryOn(ctx, db, opts...)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("registry (storage.dsn): %w", err)
		}
		e.Registry = reg
		e.closers = append(e.closers, func() { closeReg() }) //nolint:errcheck // closing at exit
		e.audit = func(ctx context.Context, now func() time.Time) (*audit.Log, func() error, error) {
			l, c, err := AuditOn(ctx, db, now)
			if err != nil {
				return nil, nil, fmt.Errorf("audit trail (storage.dsn): %w", err)
			}
			return l, c, nil
		}
		e.openOutbox = func(context.Context) error { return nil }
		return e, nil
	}
	if err := cfg.RegistryExists(registryPath); err != nil {
		return nil, fmt.Errorf("registry.path: %w", err)
	}
	reg, err := registry.Open(ctx, registryPath, opts...)
	if err != nil {
		return nil, fmt.Errorf("registry.path: %w", err)
	}
	e := &Engine{Registry: reg}
	e.closers = append(e.closers, func() { reg.Close() }) //nolint:errcheck // closing at exit
	e.audit = func(ctx context.Context, now func() time.Time) (*audit.Log, func() error, error) {
		l, err := audit.Open(ctx, registryPath, now)
		if err != nil {
			return nil, nil, fmt.Errorf("audit trail in registry.path: %w", err)
		}
		return l, l.Close, nil
	}
	e.openOutbox = func(ctx context.Context) error {
		o, err := OpenOutbox(ctx, cfg, oc)
		if err != nil {
			return err
		}
		e.Outbox, e.Local, e.sqlite = o.Outbox, o.Local, o.sqlite
		e.closers = append(e.closers, o.Close)
		return nil
	}
	return e, nil
}

// OpenOutbox opens the outbox of an engine from Open (on SQLite taking its
// lock: one gateway per file, failing with an error naming outbox.path).
func (e *Engine) OpenOutbox(ctx context.Context) error { return e.openOutbox(ctx) }

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
		e.Outbox, e.Shared, e.pg = o, o, db
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
		e.Outbox, e.Local, e.sqlite = s, true, s
	}
	return e, nil
}

// Listen calls wakeups on each notification that new rows wait, and
// registry on each that the registry changed, until ctx ends, reconnecting
// after errors (reported to onErr). An engine without notifications (one
// gateway's SQLite, whose rows the forwarder learns of at commit) just
// waits for ctx.
func (e *Engine) Listen(ctx context.Context, wakeups, registry func(), onErr func(error)) {
	if e.Shared == nil {
		<-ctx.Done()
		return
	}
	e.Shared.Listen(ctx, map[string]func(){e.Wakeups: wakeups, e.RegistryChanges: registry}, onErr)
}

// Pending returns the rows this gateway alone forwards that wait from an
// earlier run, oldest first, without payloads: on SQLite every pending
// row; on a shared engine none (they are claimed).
func (e *Engine) Pending(ctx context.Context) ([]*outbox.Record, error) {
	if e.sqlite == nil {
		return nil, nil
	}
	return e.sqlite.PendingMeta(ctx)
}

// Leases returns the engine's lease.Store, the source of every row the
// gateway forwards. On SQLite it answers in process from the rows the
// outbox commits (deleted through w's next commit), pending among them;
// budget bounds the payload bytes it keeps for rows not yet claimed. On a
// shared engine it is the database's.
func (e *Engine) Leases(w sqlitestore.Writer, pending []*outbox.Record, budget int64, now func() time.Time) lease.Store {
	if e.sqlite == nil {
		return e.Shared
	}
	l := e.sqlite.Leases(w, budget, now)
	l.Add(pending)
	return l
}

// OpenDeadLetters opens the outbox of cfg's engine beside a running
// gateway (no lock), for the dead-letter admin (iotgw deadletter): on
// SQLite the file path (outbox.path when ""), which must exist (opening
// would create an empty one, and a typo would then list no dead letter);
// on a shared engine its database. close releases it.
func OpenDeadLetters(ctx context.Context, cfg Config, oc outbox.Config, path string) (Outbox, func(), error) {
	if cfg.Engine != SQLite {
		e, err := OpenOutbox(ctx, cfg, oc)
		if err != nil {
			return nil, nil, err
		}
		return e.Outbox, e.Close, nil
	}
	if path == "" {
		path = oc.Path
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("outbox %s does not exist (give --outbox, or --config with outbox.path)", path)
	}
	c := outbox.DefaultConfig()
	c.Path = path
	st, err := sqlitestore.Open(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	return st, func() { st.Close() }, nil
}

// LastAccepted returns when device's newest accepted message still on
// record in cfg's outbox was accepted (a pending row, or a replay id kept
// for the replay window), or zero; on SQLite from the file oc.Path,
// opened beside a running gateway (zero when it does not exist yet).
func LastAccepted(ctx context.Context, cfg Config, oc outbox.Config, device string) (time.Time, error) {
	return besideGateway(ctx, cfg, oc, func(st Outbox) (time.Time, error) { return st.LastAccepted(ctx, device) })
}

// CounterBound returns the highest counter device had accepted in cfg's
// outbox (0 when none, or when the SQLite file does not exist yet).
func CounterBound(ctx context.Context, cfg Config, oc outbox.Config, device string) (int64, error) {
	return besideGateway(ctx, cfg, oc, func(st Outbox) (int64, error) { return st.CounterBound(ctx, device) })
}

// ResetCounter sets device's counter bound in cfg's outbox back to 0 and
// its reset floor to minKey (the key issued with the reset), beside a
// running gateway, and returns the bound it had (0, touching nothing, when
// the SQLite file does not exist yet: a gateway that creates it starts
// with no bound, and no key older than the registry's can verify).
func ResetCounter(ctx context.Context, cfg Config, oc outbox.Config, device string, minKey int64) (int64, error) {
	return besideGateway(ctx, cfg, oc, func(st Outbox) (int64, error) { return st.ResetCounter(ctx, device, minKey) })
}

// besideGateway runs fn on cfg's outbox opened beside a running gateway
// (OpenDeadLetters), or returns T's zero value when the SQLite file does
// not exist yet (nothing was ever accepted).
func besideGateway[T any](ctx context.Context, cfg Config, oc outbox.Config, fn func(Outbox) (T, error)) (T, error) {
	var zero T
	if cfg.Engine == SQLite {
		if _, err := os.Stat(oc.Path); errors.Is(err, os.ErrNotExist) {
			return zero, nil
		}
	}
	st, closeSt, err := OpenDeadLetters(ctx, cfg, oc, "")
	if err != nil {
		return zero, err
	}
	defer closeSt()
	return fn(st)
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

// SchemaStatus brings the schema of cfg's engine up to date and describes
// it, a line each: the shared database's schema version, or each SQLite
// file (registryPath, outboxPath) migrated when it exists (iotgw migrate).
func SchemaStatus(ctx context.Context, cfg Config, registryPath, outboxPath string) ([]string, error) {
	if cfg.Engine != SQLite {
		db, err := pgstore.Open(ctx, cfg.DSN)
		if err != nil {
			return nil, err
		}
		defer db.Close()
		applied, latest, err := db.Version(ctx)
		if err != nil {
			return nil, fmt.Errorf("storage.dsn: schema version: %w", err)
		}
		return []string{fmt.Sprintf("schema version %d (latest %d)", applied, latest)}, nil
	}
	lines := []string{"storage.engine sqlite: SQLite files migrate themselves when opened"}
	for _, file := range []struct {
		key, path string
		open      func() (interface{ Close() error }, error)
	}{
		{"registry.path", registryPath, func() (interface{ Close() error }, error) {
			r, err := registry.Open(ctx, registryPath)
			if err != nil {
				return nil, err
			}
			r.Close()
			return audit.Open(ctx, registryPath, time.Now)
		}},
		{"outbox.path", outboxPath, func() (interface{ Close() error }, error) {
			oc := outbox.DefaultConfig()
			oc.Path = outboxPath
			return sqlitestore.Open(ctx, oc)
		}},
	} {
		if _, err := os.Stat(file.path); errors.Is(err, os.ErrNotExist) {
			lines = append(lines, fmt.Sprintf("%s %s: does not exist yet (created at first use)", file.key, file.path))
			continue
		}
		c, err := file.open()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file.key, err)
		}
		c.Close()
		lines = append(lines, fmt.Sprintf("%s %s: up to date", file.key, file.path))
	}
	return lines, nil
}

// CopyCounts is what CopyToShared copied, and the schema version it
// copied into.
type CopyCounts struct {
	pgstore.ImportCounts
	Schema int
}

// CopyToShared copies the SQLite files registryPath and outboxPath into
// the empty shared database of cfg (its engine is taken to be the shared
// one whatever cfg says: the target of iotgw migrate --from --to).
func CopyToShared(ctx context.Context, cfg Config, registryPath, outboxPath string) (CopyCounts, error) {
	cfg.Engine = Postgres
	if err := cfg.Validate(); err != nil {
		return CopyCounts{}, err
	}
	db, err := pgstore.Open(ctx, cfg.DSN)
	if err != nil {
		return CopyCounts{}, err
	}
	defer db.Close()
	n, err := MigrateSQLite(ctx, registryPath, outboxPath, db)
	if err != nil {
		return CopyCounts{}, err
	}
	applied, _, err := db.Version(ctx)
	if err != nil {
		return CopyCounts{}, fmt.Errorf("storage.dsn: schema version: %w", err)
	}
	return CopyCounts{ImportCounts: n, Schema: applied}, nil
}

// CheckMigration checks the engines of iotgw migrate --from from --to to:
// the one copy there is, from SQLite files into a shared database.
func CheckMigration(from, to string) error {
	switch {
	case from != SQLite:
		return fmt.Errorf("--from: %q is not an engine migrate copies from (valid: %s)", from, SQLite)
	case to != Postgres:
		return fmt.Errorf("--to: %q is not an engine migrate copies to (valid: %s)", to, Postgres)
	}
	return nil
}
