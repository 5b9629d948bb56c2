package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/tick"
	"github.com/iotgw/iotgw/pkg/validate"
)

// Cache serves device lookups from memory. Run keeps it in step with the
// database: a change committed by any process (the CLI, another gateway)
// is picked up within one refresh interval, or at once after Kick.
//
// It fails closed. A refresh that reads the database always applies what
// it read of every device (enabled, revoked, removed, its keys and their
// expiry), even when some secrets do not open. Every secret is opened
// afresh from what was read, and a device with a key that does not open
// is served with KeyUnavailable set and no keys, so it is rejected, never
// judged under a key remembered from an earlier snapshot (a key whose
// stored form did not change opens as before: same bytes, same KEKs).
// Such a refresh, or one that cannot read the database at all, makes the
// cache stale (Stale) until a refresh reads and opens everything.
type Cache struct {
	r *Registry
	// conn is pinned for the engine's change version (SQLite's
	// data_version is per connection); dropped after an error, and
	// taken afresh at the next refresh. Guarded by mu.
	conn    *sql.Conn
	kick    chan struct{}
	devices atomic.Pointer[map[string]validate.Device]
	// snapErr is the *StaleError of the snapshot served (nil: every key
	// opened); guarded by mu.
	snapErr error
	version int64
	loads   atomic.Int64
	// unavailable counts the enabled devices of the snapshot served with
	// KeyUnavailable.
	unavailable atomic.Int64
	// nextExpiry is the earliest expiry of a cached key (zero: none).
	nextExpiry time.Time
	// mu serializes reloads: Run's ticker and the reloads on a miss.
	mu sync.Mutex
	// lastMiss is when a miss last re-read the registry (Unix ns).
	lastMiss atomic.Int64
	// stale is set while refreshes fail or leave keys unopened; nil when
	// the last refresh read and opened everything.
	stale atomic.Pointer[staleState]
}

type staleState struct {
	since time.Time
	err   error
}

// StaleError is the error of a refresh that read the registry but could
// not open some of its keys: every other change was applied, and the
// devices named are rejected (validate.KeyUnavailable) until their keys
// open again.
type StaleError struct {
	// Devices are the devices with a key that did not open, sorted.
	Devices []string
	// Err is the first failure to open (it names a device and key).
	Err error
}

// Error names how many devices are affected and the first failure.
func (e *StaleError) Error() string {
	return fmt.Sprintf("registry cache: %d device(s) rejected as key_unavailable (first: %v)", len(e.Devices), e.Err)
}

// Unwrap returns the first failure to open.
func (e *StaleError) Unwrap() error { return e.Err }

// Stale reports since when the cache has been stale and why: refreshes
// fail (the database cannot be read; the last snapshot serves) or leave
// keys unopened (their devices are rejected as key_unavailable). err is
// nil when the last refresh read and opened everything.
func (c *Cache) Stale() (since time.Time, err error) {
	s := c.stale.Load()
	if s == nil {
		return time.Time{}, nil
	}
	return s.since, s.err
}

// Unavailable returns the number of enabled devices served with
// KeyUnavailable: those rejected as key_unavailable.
func (c *Cache) Unavailable() int { return int(c.unavailable.Load()) }

// setStale records err (nil: fresh again), keeping the first time.
func (c *Cache) setStale(err error) {
	if err == nil {
		c.stale.Store(nil)
		return
	}
	since := c.r.now()
	if s := c.stale.Load(); s != nil {
		since = s.since
	}
	c.stale.Store(&staleState{since: since, err: err})
}

// MissReloadEvery bounds the re-reads on a miss: at most one per interval
// for all devices together, so a flood of unknown ids costs at most ten
// PRAGMA data_version queries a second (and a reload only when the
// registry changed).
const MissReloadEvery = 100 * time.Millisecond

// NewCache loads every device into memory. It pins one connection, used to
// poll the engine's change version (SQLite: PRAGMA data_version, which
// changes when another connection commits; PostgreSQL: registry_version).
//
// Unlike a later refresh, the first load is all or nothing: a key that
// does not open fails NewCache with an error naming the device, so a
// gateway does not start with part of its fleet locked out.
func NewCache(ctx context.Context, r *Registry) (*Cache, error) {
	c := &Cache{r: r, kick: make(chan struct{}, 1)}
	if _, err := c.Refresh(ctx); err != nil {
		c.Close()
		var se *StaleError
		if errors.As(err, &se) {
			return nil, se.Err
		}
		return nil, err
	}
	return c, nil
}

// Kick makes Run refresh now instead of at its next tick: call it when the
// engine announces a change (PostgreSQL's NOTIFY iotgw_registry). It never
// blocks; kicks while a refresh is pending collapse into one.
func (c *Cache) Kick() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Device implements validate.KeyStore from memory. On a miss it first
// re-reads the registry if it changed (at most once per MissReloadEvery
// overall), so a device added by `iotgw device add` is known at once, not
// only at the next refresh. A failed re-read leaves the miss a miss; Run
// reports the error.
func (c *Cache) Device(ctx context.Context, id string) (validate.Device, error) {
	if d, ok := (*c.devices.Load())[id]; ok {
		return d, nil
	}
	if c.missReload(ctx) {
		if d, ok := (*c.devices.Load())[id]; ok {
			return d, nil
		}
	}
	return validate.Device{}, validate.ErrUnknownDevice
}

// Reread implements validate.Rereader: after a signature did not verify,
// it re-reads the registry if it changed (sharing the miss re-reads'
// bound: at most one per MissReloadEvery for all devices together) and
// returns the device as now cached. changed is false when it did not
// re-read, nothing changed, or the device is gone.
func (c *Cache) Reread(ctx context.Context, id string) (validate.Device, bool, error) {
	if !c.missReload(ctx) {
		return validate.Device{}, false, nil
	}
	d, ok := (*c.devices.Load())[id]
	return d, ok, nil
}

// missReload refreshes unless a miss did within MissReloadEvery, and
// reports whether the devices were reloaded.
func (c *Cache) missReload(ctx context.Context) bool {
	now := c.r.now().UnixNano()
	last := c.lastMiss.Load()
	if now-last < int64(MissReloadEvery) || !c.lastMiss.CompareAndSwap(last, now) {
		return false
	}
	changed, err := c.Refresh(ctx)
	var se *StaleError
	return changed && (err == nil || errors.As(err, &se)) // a StaleError's snapshot applied
}

// Len returns the number of cached devices.
func (c *Cache) Len() int { return len(*c.devices.Load()) }

// Loads returns how many times the cache was (re)loaded.
func (c *Cache) Loads() int64 { return c.loads.Load() }

// Refresh reloads the devices if the database changed since the last load,
// and reports whether it reloaded. When a cached key has expired it first deletes the expired
// keys (and reloads), so they leave memory and disk.
//
// A key that does not open (a swapped or altered row, another KEK, a row
// in the clear in a sealed registry) does not stop the reload: everything
// else applies, its device is served with KeyUnavailable, and Refresh
// returns a *StaleError, again at every refresh until a reload opens every
// key. Any other error leaves the last snapshot serving. Both make the
// cache Stale.
func (c *Cache) Refresh(ctx context.Context) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed, err := c.refresh(ctx)
	if err != nil && ctx.Err() != nil {
		return changed, err // shutting down: not a stale registry
	}
	c.setStale(err)
	return changed, err
}

func (c *Cache) refresh(ctx context.Context) (bool, error) {
	if c.conn == nil {
		conn, err := c.r.db.Conn(ctx)
		if err != nil {
			return false, fmt.Errorf("registry cache: %w", err)
		}
		c.conn = conn
	}
	v, err := c.r.d.ChangeVersion(ctx, c.conn)
	if err != nil {
		c.conn.Close()
		c.conn = nil
		return false, fmt.Errorf("registry cache: change version: %w", err)
	}
	now := c.r.now()
	expired := !c.nextExpiry.IsZero() && !now.Before(c.nextExpiry)
	if expired {
		// Our own commit may not change our version (SQLite's
		// data_version does not): reload below.
		if _, err := deleteExpired(ctx, c.conn, c.r.d, now); err != nil {
			return false, fmt.Errorf("registry cache: %w", err)
		}
	}
	if c.devices.Load() != nil && v == c.version && !expired {
		// Nothing changed: the keys that did not open would not open
		// now either (the KEKs are fixed for the process's life).
		return false, c.snapErr
	}
	s, err := c.load(ctx)
	if err != nil {
		return false, err
	}
	if !s.next.IsZero() && !now.Before(s.next) { // loaded a key that has expired
		if _, err := deleteExpired(ctx, c.conn, c.r.d, now); err != nil {
			return false, fmt.Errorf("registry cache: %w", err)
		}
		if s, err = c.load(ctx); err != nil {
			return false, err
		}
	}
	var n int64
	for _, d := range s.devices {
		if d.Enabled && d.KeyUnavailable {
			n++
		}
	}
	c.devices.Store(&s.devices)
	c.unavailable.Store(n)
	c.snapErr = s.stale()
	c.version, c.nextExpiry = v, s.next
	c.loads.Add(1)
	return true, c.snapErr
}

// snapshot is one load of the registry.
type snapshot struct {
	devices map[string]validate.Device
	next    time.Time // earliest key expiry (zero: none)
	wrong   error     // the registry's KEK is not one this gateway holds
	failed  []string  // devices with a key that did not open, sorted
	first   error     // the first key that did not open
}

// stale returns the snapshot's *StaleError, or nil.
func (s *snapshot) stale() error {
	if len(s.failed) == 0 && s.wrong == nil {
		return nil
	}
	first := s.first
	if s.wrong != nil {
		first = s.wrong
	}
	return &StaleError{Devices: s.failed, Err: first}
}

// load reads every device and opens every key; a device with a key that
// does not open is marked KeyUnavailable (and holds no key). Only a
// failure to read is an error.
func (c *Cache) load(ctx context.Context) (*snapshot, error) {
	s := &snapshot{devices: make(map[string]validate.Device)}
	fp, err := fingerprint(ctx, c.conn)
	if err != nil {
		return nil, fmt.Errorf("registry cache: %w", err)
	}
	switch cur, _ := c.r.keks(); {
	case cur == nil && fp != "":
		s.wrong = fmt.Errorf("registry cache: %w", ErrSealed)
	case cur != nil && fp != "" && c.r.kekFor(fp) == nil:
		s.wrong = fmt.Errorf("registry cache: %w: the registry is now sealed with KEK %s, this gateway holds KEK %s%s (put the new KEK in security.kek_file and send SIGHUP, or restart)",
			ErrWrongKEK, short(fp), cur.Short(), c.r.prevNote())
	}
	rows, err := c.conn.QueryContext(ctx, `SELECT d.device_id, d.enabled, d.freshness, k.key_id, k.secret, k.sealed, k.expires_at
		FROM devices d LEFT JOIN device_keys k ON k.device_id = d.device_id ORDER BY d.device_id, k.key_id`)
	if err != nil {
		return nil, fmt.Errorf("registry cache: load: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var enabled bool
		var fresh string
		var keyID, expires sql.NullInt64
		var stored []byte
		var sealed sql.NullBool
		if err := rows.Scan(&id, &enabled, &fresh, &keyID, &stored, &sealed, &expires); err != nil {
			return nil, fmt.Errorf("registry cache: load: %w", err)
		}
		d := s.devices[id]
		d.Enabled = enabled
		d.Counter = fresh == FreshnessCounter
		if keyID.Valid {
			secret, err := c.r.openSecret(id, keyID.Int64, stored, sealed.Bool)
			if err != nil {
				err = fmt.Errorf("registry cache: %w", err)
				if !d.KeyUnavailable {
					s.failed = append(s.failed, id)
				}
				if s.first == nil {
					s.first = err
				}
				d.KeyUnavailable = true
			}
			k := validate.Key{ID: keyID.Int64, Secret: secret}
			if expires.Valid {
				k.Expires = time.Unix(expires.Int64, 0)
				if s.next.IsZero() || k.Expires.Before(s.next) {
					s.next = k.Expires
				}
			}
			d.Keys = append(d.Keys, k)
			d.Secret = secret
		}
		s.devices[id] = d
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry cache: load: %w", err)
	}
	for id, d := range s.devices {
		if d.KeyUnavailable { // no key of it is served, opened or not
			d.Keys, d.Secret = nil, nil
			s.devices[id] = d
		}
	}
	return s, nil
}

// Reload makes the next refresh reload every device whether or not the
// registry changed: after SetKEKs, keys that did not open may open now.
func (c *Cache) Reload() {
	c.mu.Lock()
	c.version = -1
	c.mu.Unlock()
	c.Kick()
}

// Run refreshes every interval, and at once after each Kick, until ctx is
// cancelled. A failed or incomplete refresh is reported to onErr (see
// Refresh for what still applies).
func (c *Cache) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t, stop := tick.Aligned(interval)
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.kick:
		}
		if _, err := c.Refresh(ctx); err != nil && ctx.Err() == nil && onErr != nil {
			onErr(err)
		}
	}
}

// Close releases the pinned connection.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	return err
}

var (
	_ validate.KeyStore = (*Cache)(nil)
	_ validate.Rereader = (*Cache)(nil)
)
