package registry

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/pkg/validate"
)

// Cache serves device lookups from memory. Run keeps it in step with the
// database: a change committed by any process (the CLI) is picked up within
// one refresh interval.
type Cache struct {
	r       *Registry
	conn    *sql.Conn
	devices atomic.Pointer[map[string]validate.Device]
	version int64
	loads   atomic.Int64
}

// NewCache loads every device into memory. It pins one connection, used to
// poll PRAGMA data_version, which changes when another connection commits.
func NewCache(ctx context.Context, r *Registry) (*Cache, error) {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("registry cache: %w", err)
	}
	c := &Cache{r: r, conn: conn}
	if _, err := c.Refresh(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Device implements validate.KeyStore from memory.
func (c *Cache) Device(_ context.Context, id string) (validate.Device, error) {
	d, ok := (*c.devices.Load())[id]
	if !ok {
		return validate.Device{}, validate.ErrUnknownDevice
	}
	return d, nil
}

// Len returns the number of cached devices.
func (c *Cache) Len() int { return len(*c.devices.Load()) }

// Loads returns how many times the cache was (re)loaded.
func (c *Cache) Loads() int64 { return c.loads.Load() }

// Refresh reloads the devices if the database changed since the last load,
// and reports whether it reloaded.
func (c *Cache) Refresh(ctx context.Context) (bool, error) {
	var v int64
	if err := c.conn.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v); err != nil {
		return false, fmt.Errorf("registry cache: data_version: %w", err)
	}
	if c.devices.Load() != nil && v == c.version {
		return false, nil
	}
	rows, err := c.conn.QueryContext(ctx, `SELECT device_id, secret, enabled FROM devices`)
	if err != nil {
		return false, fmt.Errorf("registry cache: load: %w", err)
	}
	defer rows.Close()
	m := make(map[string]validate.Device)
	for rows.Next() {
		var id, secret string
		var enabled bool
		if err := rows.Scan(&id, &secret, &enabled); err != nil {
			return false, fmt.Errorf("registry cache: load: %w", err)
		}
		m[id] = validate.Device{Secret: []byte(secret), Enabled: enabled}
	}
	if err := rows.Err(); err != nil {
		return false, fmt.Errorf("registry cache: load: %w", err)
	}
	c.devices.Store(&m)
	c.version = v
	c.loads.Add(1)
	return true, nil
}

// Run refreshes every interval until ctx is cancelled. A failed refresh is
// reported to onErr and the last good snapshot keeps serving.
func (c *Cache) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := c.Refresh(ctx); err != nil && ctx.Err() == nil && onErr != nil {
				onErr(err)
			}
		}
	}
}

// Close releases the pinned connection.
func (c *Cache) Close() error { return c.conn.Close() }

var _ validate.KeyStore = (*Cache)(nil)
