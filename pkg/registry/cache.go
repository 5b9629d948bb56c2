package registry

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/pkg/validate"
)

// Cache serves device lookups from memory. Run keeps it in step with the
// database: a change committed by any process (the CLI, another gateway)
// is picked up within one refresh interval, or at once after Kick.
type Cache struct {
	r *Registry
	// conn is pinned for the engine's change version (SQLite's
	// data_version is per connection); dropped after an error, and
	// taken afresh at the next refresh. Guarded by mu.
	conn    *sql.Conn
	kick    chan struct{}
	devices atomic.Pointer[map[string]validate.Device]
	version int64
	loads   atomic.Int64
	// nextExpiry is the earliest expiry of a cached key (zero: none).
	nextExpiry time.Time
	// mu serializes reloads: Run's ticker and the reloads on a miss.
	mu sync.Mutex
	// lastMiss is when a miss last re-read the registry (Unix ns).
	lastMiss atomic.Int64
}

// MissReloadEvery bounds the re-reads on a miss: at most one per interval
// for all devices together, so a flood of unknown ids costs at most ten
// PRAGMA data_version queries a second (and a reload only when the
// registry changed).
const MissReloadEvery = 100 * time.Millisecond

// NewCache loads every device into memory. It pins one connection, used to
// poll the engine's change version (SQLite: PRAGMA data_version, which
// changes when another connection commits; PostgreSQL: registry_version).
func NewCache(ctx context.Context, r *Registry) (*Cache, error) {
	c := &Cache{r: r, kick: make(chan struct{}, 1)}
	if _, err := c.Refresh(ctx); err != nil {
		c.Close()
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

// missReload refreshes unless a miss did within MissReloadEvery, and
// reports whether the devices were reloaded.
func (c *Cache) missReload(ctx context.Context) bool {
	now := c.r.now().UnixNano()
	last := c.lastMiss.Load()
	if now-last < int64(MissReloadEvery) || !c.lastMiss.CompareAndSwap(last, now) {
		return false
	}
	changed, err := c.Refresh(ctx)
	return err == nil && changed
}

// Len returns the number of cached devices.
func (c *Cache) Len() int { return len(*c.devices.Load()) }

// Loads returns how many times the cache was (re)loaded.
func (c *Cache) Loads() int64 { return c.loads.Load() }

// Refresh reloads the devices if the database changed since the last load,
// and reports whether it reloaded. When a cached key has expired it first
// deletes the expired keys (and reloads), so they leave memory and disk.
// A sealed secret that does not open (a swapped or altered row, another
// KEK) fails the whole reload with an error naming the device; the last
// good snapshot keeps serving.
func (c *Cache) Refresh(ctx context.Context) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
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
		return false, nil
	}
	m, next, err := c.load(ctx)
	if err != nil {
		return false, err
	}
	if !next.IsZero() && !now.Before(next) { // loaded a key that has expired
		if _, err := deleteExpired(ctx, c.conn, c.r.d, now); err != nil {
			return false, fmt.Errorf("registry cache: %w", err)
		}
		if m, next, err = c.load(ctx); err != nil {
			return false, err
		}
	}
	c.devices.Store(&m)
	c.version, c.nextExpiry = v, next
	c.loads.Add(1)
	return true, nil
}

func (c *Cache) load(ctx context.Context) (map[string]validate.Device, time.Time, error) {
	var next time.Time
	fp, err := fingerprint(ctx, c.conn)
	if err != nil {
		return nil, next, fmt.Errorf("registry cache: %w", err)
	}
	switch k := c.r.kek; {
	case k == nil && fp != "":
		return nil, next, fmt.Errorf("registry cache: %w", ErrSealed)
	case k != nil && fp != k.fp:
		return nil, next, fmt.Errorf("registry cache: %w: the registry is now sealed with KEK %s, this gateway holds KEK %s (restart it with the new security.kek_file)",
			ErrWrongKEK, short(fp), k.Short())
	}
	rows, err := c.conn.QueryContext(ctx, `SELECT d.device_id, d.enabled, k.key_id, k.secret, k.sealed, k.expires_at
		FROM devices d LEFT JOIN device_keys k ON k.device_id = d.device_id ORDER BY d.device_id, k.key_id`)
	if err != nil {
		return nil, next, fmt.Errorf("registry cache: load: %w", err)
	}
	defer rows.Close()
	m := make(map[string]validate.Device)
	for rows.Next() {
		var id string
		var enabled bool
		var keyID, expires sql.NullInt64
		var stored []byte
		var sealed sql.NullBool
		if err := rows.Scan(&id, &enabled, &keyID, &stored, &sealed, &expires); err != nil {
			return nil, next, fmt.Errorf("registry cache: load: %w", err)
		}
		d := m[id]
		d.Enabled = enabled
		if keyID.Valid {
			secret, err := c.r.openSecret(id, keyID.Int64, stored, sealed.Bool)
			if err != nil {
				return nil, next, fmt.Errorf("registry cache: %w", err)
			}
			k := validate.Key{ID: keyID.Int64, Secret: secret}
			if expires.Valid {
				k.Expires = time.Unix(expires.Int64, 0)
				if next.IsZero() || k.Expires.Before(next) {
					next = k.Expires
				}
			}
			d.Keys = append(d.Keys, k)
			d.Secret = secret
		}
		m[id] = d
	}
	if err := rows.Err(); err != nil {
		return nil, next, fmt.Errorf("registry cache: load: %w", err)
	}
	return m, next, nil
}

// Run refreshes every interval, and at once after each Kick, until ctx is
// cancelled. A failed refresh is reported to onErr and the last good
// snapshot keeps serving.
func (c *Cache) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
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

var _ validate.KeyStore = (*Cache)(nil)
