package registry

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
)

// pgHandle opens the PostgreSQL store dsn with a pool of its own (as one
// gateway or CLI process would) and returns it and its database/sql handle.
func pgHandle(t *testing.T, dsn string) (*pgstore.DB, *sql.DB) {
	t.Helper()
	db, err := pgstore.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	sdb := pgstore.SQLDB(db)
	t.Cleanup(func() { sdb.Close() })
	return db, sdb
}

// pgOpen opens the registry in dsn on a pool of its own.
func pgOpen(t *testing.T, dsn string, opts ...Option) (*Registry, error) {
	t.Helper()
	_, sdb := pgHandle(t, dsn)
	r, err := OpenDB(context.Background(), sdb, pgstore.Dialect, opts...)
	if err == nil {
		t.Cleanup(func() { r.Close() })
	}
	return r, err
}

// regEngine opens a fresh registry on one engine, and a raw handle on its
// database.
type regEngine struct {
	name string
	open func(t *testing.T, opts ...Option) (*Registry, *sql.DB)
}

func regEngines() []regEngine {
	return []regEngine{
		{"sqlite", func(t *testing.T, opts ...Option) (*Registry, *sql.DB) {
			path := filepath.Join(t.TempDir(), "r.db")
			r, err := Open(context.Background(), path, opts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close() })
			return r, rawDB(t, path)
		}},
		{"postgres", func(t *testing.T, opts ...Option) (*Registry, *sql.DB) {
			dsn := pgtest.New(t)
			r, err := pgOpen(t, dsn, opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, raw := pgHandle(t, dsn)
			return r, raw
		}},
	}
}

// TestEnginesLifecycle runs every registry operation on each engine, with
// and without a KEK, and checks what the cache then serves.
func TestEnginesLifecycle(t *testing.T) {
	for _, e := range regEngines() {
		for _, sealed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sealed=%v", e.name, sealed), func(t *testing.T) {
				ctx := context.Background()
				clk := time.Unix(1_700_000_000, 0)
				var opts []Option
				var kek *KEK
				if sealed {
					kek = testKEK(t, 7)
					opts = append(opts, WithKEK(kek))
				}
				opts = append(opts, WithClock(func() time.Time { return clk }))
				r, raw := e.open(t, opts...)
				if r.Sealed() != sealed {
					t.Fatalf("Sealed = %v, want %v", r.Sealed(), sealed)
				}
				const s1, s2, s3 = "first-secret-of-enough-length", "second-secret-of-enough-length", "third-secret-of-enough-length"
				for id, s := range map[string]string{"alpha": s1, "beta": s2} {
					if err := r.Add(ctx, id, s); err != nil {
						t.Fatal(err)
					}
				}
				if err := r.Add(ctx, "alpha", s1); !errors.Is(err, ErrExists) {
					t.Fatalf("duplicate Add = %v, want ErrExists", err)
				}
				var stored []byte
				if err := raw.QueryRow(r.q(`SELECT secret FROM device_keys WHERE device_id = ?`), "alpha").Scan(&stored); err != nil {
					t.Fatal(err)
				}
				if got := bytes.Contains(stored, []byte(s1)); got == sealed {
					t.Fatalf("stored secret in the clear = %v with sealed = %v", got, sealed)
				}
				k, err := r.Rotate(ctx, "alpha", s3, time.Hour)
				if err != nil || k.ID != 2 {
					t.Fatalf("Rotate = %+v, %v; want key 2", k, err)
				}
				keys, err := r.Keys(ctx, "alpha")
				if err != nil || len(keys) != 2 || !keys[0].ExpiresAt.Equal(clk.Add(time.Hour)) || !keys[1].ExpiresAt.IsZero() {
					t.Fatalf("Keys = %+v, %v", keys, err)
				}
				c, err := NewCache(ctx, r)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				d, err := c.Device(ctx, "alpha")
				if err != nil || !d.Enabled || len(d.Keys) != 2 || string(d.Keys[0].Secret) != s1 || string(d.Keys[1].Secret) != s3 {
					t.Fatalf("cached alpha = %+v, %v", d, err)
				}
				if err := r.SetEnabled(ctx, "beta", false); err != nil {
					t.Fatal(err)
				}
				if err := r.Revoke(ctx, "alpha"); err != nil {
					t.Fatal(err)
				}
				if err := r.SetEnabled(ctx, "alpha", true); !errors.Is(err, ErrRevoked) {
					t.Fatalf("enable revoked = %v, want ErrRevoked", err)
				}
				if _, err := r.Rotate(ctx, "alpha", s2, 0); !errors.Is(err, ErrRevoked) {
					t.Fatalf("rotate revoked = %v, want ErrRevoked", err)
				}
				list, err := r.List(ctx)
				if err != nil || len(list) != 2 || list[0].ID != "alpha" || list[0].Enabled || !list[0].Revoked() || list[1].Enabled || list[1].Revoked() {
					t.Fatalf("List = %+v, %v", list, err)
				}
				if _, err := c.Refresh(ctx); err != nil {
					t.Fatal(err)
				}
				if d, _ := c.Device(ctx, "beta"); d.Enabled {
					t.Fatal("cache still serves beta enabled")
				}
				if r.kek != nil || !sealed { // DeviceSecrets on the same database
					got, err := DeviceSecretsDB(ctx, raw, r.d, kek)
					if err != nil || string(got["alpha"]) != s3 || string(got["beta"]) != s2 {
						t.Fatalf("DeviceSecretsDB = %q, %v", got, err)
					}
				}
				clk = clk.Add(2 * time.Hour)
				if n, err := r.DeleteExpired(ctx, clk); err != nil || n != 1 {
					t.Fatalf("DeleteExpired = %d, %v; want 1", n, err)
				}
				if err := r.Remove(ctx, "beta"); err != nil {
					t.Fatal(err)
				}
				if _, err := r.Get(ctx, "beta"); !errors.Is(err, ErrNotFound) {
					t.Fatalf("Get removed = %v, want ErrNotFound", err)
				}
				if err := r.Remove(ctx, "beta"); !errors.Is(err, ErrNotFound) {
					t.Fatalf("Remove again = %v, want ErrNotFound", err)
				}
				if _, err := c.Refresh(ctx); err != nil {
					t.Fatal(err)
				}
				if _, err := c.Device(ctx, "beta"); err == nil || c.Len() != 1 {
					t.Fatalf("cache after remove: %d devices, beta err %v", c.Len(), err)
				}
			})
		}
	}
}

// copyRegistry copies every registry row from one database to another, as
// an operator moving a sealed registry from SQLite to PostgreSQL (or an
// attacker moving rows between deployments) would: the sealed bytes as is.
func copyRegistry(t *testing.T, from, to *sql.DB, toD interface{ Rebind(string) string }) {
	t.Helper()
	copyRows(t, from, to, toD, "devices", "device_id, enabled, created_at, revoked_at", func() []any {
		return []any{new(string), new(bool), new(int64), new(sql.NullInt64)}
	})
	copyRows(t, from, to, toD, "device_keys", "device_id, key_id, secret, sealed, created_at, expires_at", func() []any {
		return []any{new(string), new(int64), new([]byte), new(bool), new(int64), new(sql.NullInt64)}
	})
	copyRows(t, from, to, toD, "registry_meta", "name, value", func() []any { return []any{new(string), new(string)} })
}

func copyRows(t *testing.T, from, to *sql.DB, toD interface{ Rebind(string) string }, table, cols string, dest func() []any) {
	t.Helper()
	rows, err := from.Query(`SELECT ` + cols + ` FROM ` + table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var batch [][]any
	for rows.Next() {
		d := dest()
		if err := rows.Scan(d...); err != nil {
			t.Fatal(err)
		}
		batch = append(batch, d)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(dest())), ", ")
	for _, d := range batch {
		args := make([]any, len(d))
		for i, p := range d {
			args[i] = reflect.ValueOf(p).Elem().Interface()
		}
		if _, err := to.Exec(toD.Rebind(`INSERT INTO `+table+`(`+cols+`) VALUES(`+marks+`)`), args...); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSealedRegistryCopiedToPostgres (attack): a sealed SQLite registry
// copied row for row into PostgreSQL opens there with its KEK and serves
// the same secrets; another KEK is refused, no KEK serves no secret, and
// rows swapped or replaced by plaintext in PostgreSQL do not open.
func TestSealedRegistryCopiedToPostgres(t *testing.T) {
	ctx := context.Background()
	kek := testKEK(t, 1)
	path := filepath.Join(t.TempDir(), "r.db")
	src, err := Open(ctx, path, WithKEK(kek))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	want := map[string]string{}
	for _, id := range []string{"alpha", "beta"} {
		s, _ := NewSecret()
		want[id] = s
		if err := src.Add(ctx, id, s); err != nil {
			t.Fatal(err)
		}
	}
	dsn := pgtest.New(t)
	_, raw := pgHandle(t, dsn)
	copyRegistry(t, rawDB(t, path), raw, pgstore.Dialect)

	r, err := pgOpen(t, dsn, WithKEK(kek))
	if err != nil {
		t.Fatalf("open the copy with its KEK: %v", err)
	}
	c, err := NewCache(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for id, s := range want {
		if d, err := c.Device(ctx, id); err != nil || string(d.Secret) != s {
			t.Fatalf("%s on postgres: %q, %v; want the secret added on sqlite", id, d.Secret, err)
		}
	}
	if _, err := pgOpen(t, dsn, WithKEK(testKEK(t, 2))); !errors.Is(err, ErrWrongKEK) {
		t.Fatalf("open with another KEK = %v, want ErrWrongKEK", err)
	}
	nokek, err := pgOpen(t, dsn)
	if err != nil || !nokek.Sealed() {
		t.Fatalf("open without a KEK = %v (sealed %v), want metadata access", err, nokek != nil && nokek.Sealed())
	}
	if _, err := NewCache(ctx, nokek); !errors.Is(err, ErrSealed) {
		t.Fatalf("cache without a KEK = %v, want ErrSealed", err)
	}
	if err := nokek.Add(ctx, "gamma", want["alpha"]); !errors.Is(err, ErrSealed) {
		t.Fatalf("add without a KEK = %v, want ErrSealed (no plaintext into a sealed registry)", err)
	}

	// Swap alpha's and beta's sealed secrets in PostgreSQL.
	var a, b []byte
	q := pgstore.Dialect.Rebind(`SELECT secret FROM device_keys WHERE device_id = ?`)
	if err := raw.QueryRow(q, "alpha").Scan(&a); err != nil {
		t.Fatal(err)
	}
	if err := raw.QueryRow(q, "beta").Scan(&b); err != nil {
		t.Fatal(err)
	}
	set := pgstore.Dialect.Rebind(`UPDATE device_keys SET secret = ? WHERE device_id = ?`)
	if _, err := raw.Exec(set, b, "alpha"); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(set, a, "beta"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(ctx); !errors.Is(err, ErrOpen) {
		t.Fatalf("refresh after a swap = %v, want ErrOpen", err)
	}
	if d, _ := c.Device(ctx, "alpha"); !d.KeyUnavailable || d.Secret != nil {
		t.Fatalf("alpha after a swap: unavailable %v, secret served %v; want rejected (fail closed)", d.KeyUnavailable, d.Secret != nil)
	}
	// A plaintext secret (sealed = false) in a sealed registry.
	if _, err := raw.Exec(pgstore.Dialect.Rebind(`UPDATE device_keys SET secret = ?, sealed = ? WHERE device_id = ?`), []byte("attacker-chosen-secret-000"), false, "alpha"); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(set, b, "beta"); err != nil {
		t.Fatal(err)
	}
	if _, err := NewCache(ctx, r); !errors.Is(err, ErrOpen) {
		t.Fatalf("cache with a plaintext row = %v, want ErrOpen", err)
	}
}

// TestPostgresResealAndConcurrentWriters: kek rotate on PostgreSQL
// re-seals every key (then only the new KEK opens it), and two processes
// rotating one device at once get distinct key ids.
func TestPostgresResealAndConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.New(t)
	old, next := testKEK(t, 1), testKEK(t, 2)
	a, err := pgOpen(t, dsn, WithKEK(old))
	if err != nil {
		t.Fatal(err)
	}
	b, err := pgOpen(t, dsn, WithKEK(old))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Add(ctx, "alpha", "first-secret-of-enough-length"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for _, r := range []*Registry{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				if _, err := r.Rotate(ctx, "alpha", fmt.Sprintf("rotated-secret-number-%04d", i), time.Hour); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Rotate: %v", err)
	}
	keys, err := a.Keys(ctx, "alpha")
	if err != nil || len(keys) != 41 || keys[40].ID != 41 {
		t.Fatalf("after 40 concurrent rotations: %d keys (last %+v), %v; want 41", len(keys), keys[len(keys)-1], err)
	}
	n, err := a.Reseal(ctx, next)
	if err != nil || n != 41 {
		t.Fatalf("Reseal = %d, %v; want 41", n, err)
	}
	if _, err := pgOpen(t, dsn, WithKEK(old)); !errors.Is(err, ErrWrongKEK) {
		t.Fatalf("open with the old KEK = %v, want ErrWrongKEK", err)
	}
	r, err := pgOpen(t, dsn, WithKEK(next))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCache(ctx, r)
	if err != nil {
		t.Fatalf("cache under the new KEK: %v", err)
	}
	defer c.Close()
	if d, err := c.Device(ctx, "alpha"); err != nil || len(d.Keys) != 41 || string(d.Keys[0].Secret) != "first-secret-of-enough-length" {
		t.Fatalf("alpha after reseal: %d keys, %v", len(d.Keys), err)
	}
}

// waitDevice polls c (memory only, no refresh) until alpha's Enabled is
// want, for at most limit.
func waitDevice(t *testing.T, c *Cache, want bool, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		c.mu.Lock() // a Device miss would refresh on its own: read the snapshot
		d, ok := (*c.devices.Load())["alpha"]
		c.mu.Unlock()
		if ok && d.Enabled == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha enabled = %v after %s, want %v", d.Enabled, limit, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPostgresCacheSeesOtherGateway: a device disabled through one
// process reaches another gateway's cache within 2 s, through the
// registry notification (Listen → Kick, with polling turned far down),
// and through polling alone (refresh 1 s, no listener).
func TestPostgresCacheSeesOtherGateway(t *testing.T) {
	for _, notify := range []bool{true, false} {
		t.Run(fmt.Sprintf("notify=%v", notify), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dsn := pgtest.New(t)
			admin, err := pgOpen(t, dsn)
			if err != nil {
				t.Fatal(err)
			}
			if err := admin.Add(ctx, "alpha", "first-secret-of-enough-length"); err != nil {
				t.Fatal(err)
			}
			gw, gsdb := pgHandle(t, dsn)
			r, err := OpenDB(ctx, gsdb, pgstore.Dialect)
			if err != nil {
				t.Fatal(err)
			}
			c, err := NewCache(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			interval := time.Second
			var wg sync.WaitGroup
			defer wg.Wait()
			defer cancel()
			if notify {
				interval = time.Hour
				listening := make(chan struct{}, 1)
				wg.Add(1)
				go func() {
					defer wg.Done()
					pgstore.Listen(ctx, gw, []string{pgstore.RegistryChannel}, func(string) {
						c.Kick()
						select {
						case listening <- struct{}{}:
						default:
						}
					}, func(err error) { t.Log(err) })
				}()
				<-listening // the first call comes once LISTEN is in place
			}
			wg.Add(1)
			go func() { defer wg.Done(); c.Run(ctx, interval, func(err error) { t.Log(err) }) }()
			waitDevice(t, c, true, time.Second)
			if err := admin.SetEnabled(ctx, "alpha", false); err != nil {
				t.Fatal(err)
			}
			waitDevice(t, c, false, 2*time.Second)
			if err := admin.SetEnabled(ctx, "alpha", true); err != nil {
				t.Fatal(err)
			}
			waitDevice(t, c, true, 2*time.Second)
		})
	}
}
