package registry

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"

	"github.com/iotgw/iotgw/pkg/internal/sqlitex"
	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
)

// sharedDB is one registry database that several handles open, as the
// gateway and the CLI do: handle opens a new Registry on it, raw is a
// plain handle on it and rebind rewrites ? placeholders for its engine.
type sharedDB struct {
	handle func(opts ...Option) (*Registry, error)
	raw    *sql.DB
	rebind func(string) string
}

// sharedEngines makes a fresh sharedDB on each engine, named.
var sharedEngines = []struct {
	name string
	make func(t *testing.T) sharedDB
}{
	{"sqlite", func(t *testing.T) sharedDB {
		path := filepath.Join(t.TempDir(), "r.db")
		return sharedDB{handle: func(opts ...Option) (*Registry, error) {
			r, err := Open(context.Background(), path, opts...)
			if err == nil {
				t.Cleanup(func() { r.Close() })
			}
			return r, err
		}, raw: rawDB(t, path), rebind: sqlitex.Dialect.Rebind}
	}},
	{"postgres", func(t *testing.T) sharedDB {
		dsn := pgtest.New(t)
		_, raw := pgHandle(t, dsn)
		return sharedDB{handle: func(opts ...Option) (*Registry, error) { return pgOpen(t, dsn, opts...) },
			raw: raw, rebind: pgstore.Dialect.Rebind}
	}},
}

func (e sharedDB) must(t *testing.T, opts ...Option) *Registry {
	t.Helper()
	r, err := e.handle(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// served reports what the cache serves for id: "unknown", "disabled",
// "unavailable" or "ok".
func served(t *testing.T, c *Cache, id string) string {
	t.Helper()
	d, err := c.Device(context.Background(), id)
	switch {
	case err != nil:
		return "unknown"
	case !d.Enabled:
		return "disabled"
	case d.KeyUnavailable:
		if d.Secret != nil || d.Keys != nil {
			t.Fatalf("%s: unavailable but a key is served", id)
		}
		return "unavailable"
	}
	return "ok"
}

// TestCacheFailsClosed: the gateway's cache holds KEK 1. The registry is
// re-sealed under KEK 2 by another process, or one row in the clear is
// slipped into it; then devices are disabled, removed and rotated. Every
// such change applies at the next refresh, a device whose key does not
// open is served as unavailable (never with the key from before), and the
// cache is stale until everything opens again. Before the fix a refresh
// failed as a whole and kept serving its last snapshot.
func TestCacheFailsClosed(t *testing.T) {
	ctx := context.Background()
	k1, k2 := testKEK(t, 1), testKEK(t, 2)
	for _, eng := range sharedEngines {
		t.Run(eng.name+"/kek rotated under the cache", func(t *testing.T) {
			e := eng.make(t)
			cli := e.must(t, WithKEK(k1))
			for _, id := range []string{"d1", "d2", "d3"} {
				if err := cli.Add(ctx, id, "secret-of-"+id+"-0123456789"); err != nil {
					t.Fatal(err)
				}
			}
			c, err := NewCache(ctx, e.must(t, WithKEK(k1)))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := cli.Reseal(ctx, k2); err != nil {
				t.Fatal(err)
			}
			if err := cli.SetEnabled(ctx, "d1", false); err != nil {
				t.Fatal(err)
			}
			if err := cli.Remove(ctx, "d3"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Refresh(ctx); !errors.Is(err, ErrWrongKEK) {
				t.Fatalf("refresh = %v, want a StaleError wrapping ErrWrongKEK", err)
			}
			for id, want := range map[string]string{"d1": "disabled", "d2": "unavailable", "d3": "unknown"} {
				if got := served(t, c, id); got != want {
					t.Errorf("%s: %s, want %s", id, got, want)
				}
			}
			since, err := c.Stale()
			if err == nil || since.IsZero() {
				t.Fatalf("Stale() = %v, %v; want stale", since, err)
			}
			loads := c.Loads()
			if _, err := c.Refresh(ctx); err == nil {
				t.Fatal("a second refresh made it fresh")
			}
			if c.Loads() != loads {
				t.Fatal("a stale cache reloaded with nothing changed")
			}
			if s2, _ := c.Stale(); !s2.Equal(since) {
				t.Fatalf("stale since moved from %v to %v", since, s2)
			}
			if n := c.Unavailable(); n != 1 {
				t.Fatalf("Unavailable() = %d, want 1", n)
			}
		})
		t.Run(eng.name+"/one row in the clear", func(t *testing.T) {
			e := eng.make(t)
			cli := e.must(t, WithKEK(k1))
			for _, id := range []string{"d1", "d2", "bad"} {
				if err := cli.Add(ctx, id, "secret-of-"+id+"-0123456789"); err != nil {
					t.Fatal(err)
				}
			}
			c, err := NewCache(ctx, e.must(t, WithKEK(k1)))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			raw, rebind := e.raw, e.rebind
			if _, err := raw.Exec(rebind(`UPDATE device_keys SET secret = ?, sealed = ? WHERE device_id = ?`), []byte("attacker-chosen-secret-000"), false, "bad"); err != nil {
				t.Fatal(err)
			}
			if err := cli.SetEnabled(ctx, "d2", false); err != nil {
				t.Fatal(err)
			}
			_, err = c.Refresh(ctx)
			var se *StaleError
			if !errors.As(err, &se) || !errors.Is(err, ErrOpen) || len(se.Devices) != 1 || se.Devices[0] != "bad" {
				t.Fatalf("refresh = %v, want a StaleError naming bad", err)
			}
			for id, want := range map[string]string{"d1": "ok", "d2": "disabled", "bad": "unavailable"} {
				if got := served(t, c, id); got != want {
					t.Errorf("%s: %s, want %s", id, got, want)
				}
			}
			// Repaired: the row removed and the device given a new key.
			if _, err := raw.Exec(rebind(`DELETE FROM device_keys WHERE device_id = ?`), "bad"); err != nil {
				t.Fatal(err)
			}
			if _, err := cli.Rotate(ctx, "bad", "a-new-secret-for-bad-0123", 0); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Refresh(ctx); err != nil {
				t.Fatalf("refresh after the repair: %v", err)
			}
			if _, err := c.Stale(); err != nil {
				t.Fatalf("still stale after the repair: %v", err)
			}
			if got := served(t, c, "bad"); got != "ok" {
				t.Fatalf("bad after the repair: %s", got)
			}
		})
	}
}

// TestCacheWithPreviousKEK: a cache holding KEK 2 and, as previous, KEK 1
// opens a registry sealed under KEK 1, keeps opening it while another
// process re-seals it under KEK 2, and is never stale; a device added
// through a handle holding both before the re-seal is sealed under KEK 1
// (the registry's), not mixed in under KEK 2.
func TestCacheWithPreviousKEK(t *testing.T) {
	ctx := context.Background()
	k1, k2 := testKEK(t, 1), testKEK(t, 2)
	for _, eng := range sharedEngines {
		t.Run(eng.name, func(t *testing.T) {
			e := eng.make(t)
			old := e.must(t, WithKEK(k1))
			if err := old.Add(ctx, "d1", "secret-of-d1-0123456789"); err != nil {
				t.Fatal(err)
			}
			both := e.must(t, WithKEK(k2), WithPreviousKEK(k1))
			if err := both.Add(ctx, "d2", "secret-of-d2-0123456789"); err != nil {
				t.Fatal(err)
			}
			oc, err := NewCache(ctx, old)
			if err != nil {
				t.Fatalf("d2 was not sealed under the registry's KEK 1: %v", err)
			}
			oc.Close()
			c, err := NewCache(ctx, e.must(t, WithKEK(k2), WithPreviousKEK(k1)))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := both.Reseal(ctx, k2); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Refresh(ctx); err != nil {
				t.Fatalf("refresh after the re-seal: %v", err)
			}
			for _, id := range []string{"d1", "d2"} {
				d, _ := c.Device(ctx, id)
				if got := served(t, c, id); got != "ok" || string(d.Secret) != "secret-of-"+id+"-0123456789" {
					t.Fatalf("%s: %s", id, got)
				}
			}
			if _, err := e.handle(WithKEK(k1)); !errors.Is(err, ErrWrongKEK) {
				t.Fatalf("KEK 1 alone after the re-seal: %v, want ErrWrongKEK", err)
			}
			// A third KEK as previous does not help.
			if _, err := e.handle(WithKEK(testKEK(t, 3)), WithPreviousKEK(k1)); !errors.Is(err, ErrWrongKEK) {
				t.Fatalf("KEKs 3 and 1 after the re-seal: %v, want ErrWrongKEK", err)
			}
		})
	}
}
