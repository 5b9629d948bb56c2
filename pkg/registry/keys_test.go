package registry_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/registry"
)

// clock is an injected, settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestRotateOverlapAndExpiry: rotate keeps the old key for the overlap;
// once it expires the cache's refresh deletes it from memory and disk.
func TestRotateOverlapAndExpiry(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	r, err := registry.Open(ctx, filepath.Join(t.TempDir(), "r.db"), registry.WithClock(clk.now))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const s1, s2, s3 = "first-secret-0123456789", "second-secret-0123456789", "third-secret-0123456789"
	if err := r.Add(ctx, "dev", s1); err != nil {
		t.Fatal(err)
	}
	c, err := registry.NewCache(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, err := r.Rotate(ctx, "dev", s2, time.Hour)
	if err != nil || k.ID != 2 {
		t.Fatalf("Rotate: %+v, %v", k, err)
	}
	if _, err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	d, _ := c.Device(ctx, "dev")
	if len(d.Keys) != 2 || string(d.Keys[0].Secret) != s1 || !d.Keys[0].Expires.Equal(clk.now().Add(time.Hour)) ||
		string(d.Keys[1].Secret) != s2 || !d.Keys[1].Expires.IsZero() || string(d.Secret) != s2 {
		t.Fatalf("after rotate: %d keys", len(d.Keys))
	}

	// A second rotation with a shorter overlap shortens key 1's life and
	// never lengthens it.
	clk.add(10 * time.Minute)
	if _, err := r.Rotate(ctx, "dev", s3, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	keys, _ := r.Keys(ctx, "dev")
	want := clk.now().Add(5 * time.Minute)
	if len(keys) != 3 || !keys[0].ExpiresAt.Equal(want) || !keys[1].ExpiresAt.Equal(want) || !keys[2].ExpiresAt.IsZero() {
		t.Fatalf("after second rotate: %+v", keys)
	}

	clk.add(5 * time.Minute)
	if _, err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	d, _ = c.Device(ctx, "dev")
	if len(d.Keys) != 1 || d.Keys[0].ID != 3 || string(d.Secret) != s3 {
		t.Fatalf("after expiry the cache holds %d keys", len(d.Keys))
	}
	if keys, _ := r.Keys(ctx, "dev"); len(keys) != 1 || keys[0].ID != 3 {
		t.Fatalf("after expiry the database holds %+v", keys)
	}
}

func TestRotateErrors(t *testing.T) {
	ctx := context.Background()
	r, err := registry.Open(ctx, filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Add(ctx, "dev", "a-secret-0123456789"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		id      string
		secret  string
		overlap time.Duration
		want    error
	}{
		{"unknown device", "ghost", "b-secret-0123456789", time.Hour, registry.ErrNotFound},
		{"bad secret", "dev", "short", time.Hour, registry.ErrBadSecret},
		{"negative overlap", "dev", "b-secret-0123456789", -time.Second, registry.ErrBadOverlap},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := r.Rotate(ctx, tc.id, tc.secret, tc.overlap); !errors.Is(err, tc.want) {
				t.Fatalf("Rotate: %v, want %v", err, tc.want)
			}
		})
	}
}

// TestRevoke: a revoked device is disabled, says so, and cannot be
// enabled or rotated again.
func TestRevoke(t *testing.T) {
	ctx := context.Background()
	r, err := registry.Open(ctx, filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Add(ctx, "dev", "a-secret-0123456789"); err != nil {
		t.Fatal(err)
	}
	if err := r.Revoke(ctx, "ghost"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Revoke unknown: %v", err)
	}
	if err := r.Revoke(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	i, err := r.Get(ctx, "dev")
	if err != nil || i.Enabled || !i.Revoked() {
		t.Fatalf("after Revoke: %+v, %v", i, err)
	}
	first := i.RevokedAt
	if err := r.Revoke(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if i, _ := r.Get(ctx, "dev"); !i.RevokedAt.Equal(first) {
		t.Fatal("revoking again moved revoked_at")
	}
	err = r.SetEnabled(ctx, "dev", true)
	if !errors.Is(err, registry.ErrRevoked) || !strings.Contains(err.Error(), "dev") {
		t.Fatalf("enable revoked: %v", err)
	}
	if i, _ := r.Get(ctx, "dev"); i.Enabled {
		t.Fatal("revoked device was enabled")
	}
	if _, err := r.Rotate(ctx, "dev", "b-secret-0123456789", 0); !errors.Is(err, registry.ErrRevoked) {
		t.Fatalf("rotate revoked: %v", err)
	}
	if err := r.SetEnabled(ctx, "ghost", true); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("enable unknown: %v", err)
	}
	// SetEnabled(false), what revoke's CLI calls today, still works.
	if err := r.SetEnabled(ctx, "dev", false); err != nil {
		t.Fatal(err)
	}
}
