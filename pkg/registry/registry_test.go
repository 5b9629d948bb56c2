package registry_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/validate"
)

const (
	secret1 = "a17513da805d98386da054eb4bcd037332257d556e379992293333e283e52a17"
	secret2 = "second-secret-of-enough-length"
)

func ctx() context.Context { return context.Background() }

func open(t *testing.T, path string) *registry.Registry {
	t.Helper()
	r, err := registry.Open(ctx(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		path    string
		ok      bool
		wantErr string // part of the error when !ok
	}{
		{"new file", filepath.Join(dir, "new.db"), true, ""},
		{"empty path", "", false, "registry path is empty"},
		{"missing directory", filepath.Join(dir, "no", "such", "dir", "r.db"), false, "directory " + filepath.Join(dir, "no", "such", "dir") + " does not exist"},
		{"a directory, not a file", dir, false, dir},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := registry.Open(ctx(), tc.path)
			if err == nil {
				r.Close()
			}
			if tc.ok != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Open = %v, want ok=%v or an error containing %q", err, tc.ok, tc.wantErr)
			}
		})
	}
}

func TestOpenCreatesPrivateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	open(t, path)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", st.Mode().Perm())
	}
}

func TestMigrationsIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	r := open(t, path)
	if err := r.Add(ctx(), "sensor_001", secret1); err != nil {
		t.Fatal(err)
	}
	r.Close()
	for range 3 { // reopening applies nothing twice and keeps the data
		r := open(t, path)
		if _, err := r.Get(ctx(), "sensor_001"); err != nil {
			t.Fatalf("after reopen: %v", err)
		}
		r.Close()
	}
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n, max int
	if err := db.QueryRow(`SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &max); err != nil {
		t.Fatal(err)
	}
	if n != max {
		t.Fatalf("schema_migrations has %d rows for version %d", n, max)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	open(t, path).Close()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO schema_migrations(version, applied_at) VALUES(999, 0)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := registry.Open(ctx(), path); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open of a newer schema = %v", err)
	}
}

func TestAdd(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		secret  string
		wantErr error
	}{
		{"ok", "sensor_001", secret1, nil},
		{"duplicate", "sensor_001", secret2, registry.ErrExists},
		{"ids are case-sensitive", "SENSOR_001", secret1, nil},
		{"64-char id", strings.Repeat("x", 64), secret1, nil},
		{"65-char id", strings.Repeat("x", 65), secret1, registry.ErrBadID},
		{"empty id", "", secret1, registry.ErrBadID},
		{"id with slash", "a/b", secret1, registry.ErrBadID},
		{"id with MQTT wildcard", "a+", secret1, registry.ErrBadID},
		{"short secret", "sensor_002", "short", registry.ErrBadSecret},
		{"secret with surrounding space", "sensor_002", " " + secret1, registry.ErrBadSecret},
		{"secret with newline", "sensor_002", secret1[:20] + "\n" + secret1[20:], registry.ErrBadSecret},
		{"secret with invalid UTF-8", "sensor_002", secret1 + "\xff", registry.ErrBadSecret},
		{"unicode secret", "sensor_003", "pässwörd-für-sensor_001-✓", nil},
	}
	r := open(t, filepath.Join(t.TempDir(), "r.db"))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := r.Add(ctx(), tc.id, tc.secret)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Add = %v, want %v", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), tc.secret) {
				t.Fatalf("error %q quotes the secret", err)
			}
		})
	}
}

func TestListGetNeverExposeSecrets(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "r.db"))
	before := time.Now().Add(-time.Second)
	for _, id := range []string{"b", "a", "c"} {
		if err := r.Add(ctx(), id, secret1+id); err != nil {
			t.Fatal(err)
		}
	}
	list, err := r.List(ctx())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range list {
		ids = append(ids, d.ID)
		if !d.Enabled || d.CreatedAt.Before(before) || d.CreatedAt.After(time.Now().Add(time.Second)) {
			t.Errorf("device %+v", d)
		}
		if s := fmt.Sprintf("%+v %#v", d, d); strings.Contains(s, secret1) {
			t.Errorf("List exposes a secret: %s", s)
		}
	}
	if strings.Join(ids, ",") != "a,b,c" {
		t.Fatalf("List order = %v", ids)
	}
	got, err := r.Get(ctx(), "b")
	if err != nil || got.ID != "b" || strings.Contains(fmt.Sprintf("%#v", got), secret1) {
		t.Fatalf("Get = %#v, %v", got, err)
	}
	if _, err := r.Get(ctx(), "zz"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get unknown = %v", err)
	}
}

func TestEnableDisableRemove(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "r.db"))
	if err := r.Add(ctx(), "sensor_001", secret1); err != nil {
		t.Fatal(err)
	}
	enabled := func() bool {
		d, err := r.Get(ctx(), "sensor_001")
		if err != nil {
			t.Fatal(err)
		}
		return d.Enabled
	}
	steps := []struct {
		name        string
		do          func() error
		wantErr     error
		wantEnabled bool
	}{
		{"disable", func() error { return r.SetEnabled(ctx(), "sensor_001", false) }, nil, false},
		{"disable again", func() error { return r.SetEnabled(ctx(), "sensor_001", false) }, nil, false},
		{"enable", func() error { return r.SetEnabled(ctx(), "sensor_001", true) }, nil, true},
		{"disable unknown", func() error { return r.SetEnabled(ctx(), "ghost", false) }, registry.ErrNotFound, true},
		{"remove unknown", func() error { return r.Remove(ctx(), "ghost") }, registry.ErrNotFound, true},
	}
	for _, s := range steps {
		if err := s.do(); !errors.Is(err, s.wantErr) {
			t.Fatalf("%s: %v, want %v", s.name, err, s.wantErr)
		}
		if got := enabled(); got != s.wantEnabled {
			t.Fatalf("%s: enabled = %v", s.name, got)
		}
	}
	if err := r.Remove(ctx(), "sensor_001"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx(), "sensor_001"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get after Remove = %v", err)
	}
	if err := r.Remove(ctx(), "sensor_001"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("second Remove = %v", err)
	}
	if err := r.Add(ctx(), "sensor_001", secret2); err != nil {
		t.Fatalf("Add after Remove: %v", err)
	}
}

func TestNewSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 10 {
		s, err := registry.NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != 64 || strings.Trim(s, "0123456789abcdef") != "" || !registry.ValidSecret(s) || seen[s] {
			t.Fatalf("NewSecret = %q", s)
		}
		seen[s] = true
	}
}

func TestValidSecret(t *testing.T) {
	tests := []struct {
		s    string
		want bool
	}{
		{strings.Repeat("a", 16), true},
		{strings.Repeat("a", 15), false},
		{strings.Repeat("a", 1024), true},
		{strings.Repeat("a", 1025), false},
		{"inner spaces are fine", true},
		{" leading-space-secret", false},
		{"trailing-space-secret ", false},
		{"tab\tinside-the-secret", false},
		{"delete\x7finside-the-secret", false},
		{"invalid-utf8-\xff-in-secret", false},
		{"unicode-sëcret-✓-ok", true},
	}
	for _, tc := range tests {
		if got := registry.ValidSecret(tc.s); got != tc.want {
			t.Errorf("ValidSecret(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

func TestCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	gw := open(t, path)  // the gateway's handle
	cli := open(t, path) // a second handle, as the CLI in another process
	if err := cli.Add(ctx(), "sensor_001", secret1); err != nil {
		t.Fatal(err)
	}
	c, err := registry.NewCache(ctx(), gw)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lookup := func(id string) (validate.Device, error) { return c.Device(ctx(), id) }

	if d, err := lookup("sensor_001"); err != nil || string(d.Secret) != secret1 || !d.Enabled {
		t.Fatalf("Device = %+v, %v", d, err)
	}
	if _, err := lookup("sensor_002"); !errors.Is(err, validate.ErrUnknownDevice) {
		t.Fatalf("unknown device = %v", err)
	}
	if reloaded, err := c.Refresh(ctx()); err != nil || reloaded {
		t.Fatalf("Refresh without a change = %v, %v; want no reload", reloaded, err)
	}
	steps := []struct {
		name   string
		change func() error
		id     string
		want   *validate.Device // nil: unknown
	}{
		{"add by another handle", func() error { return cli.Add(ctx(), "sensor_002", secret2) }, "sensor_002", &validate.Device{Secret: []byte(secret2), Enabled: true}},
		{"disable by another handle", func() error { return cli.SetEnabled(ctx(), "sensor_001", false) }, "sensor_001", &validate.Device{Secret: []byte(secret1)}},
		{"remove by another handle", func() error { return cli.Remove(ctx(), "sensor_002") }, "sensor_002", nil},
		{"change by the same handle", func() error { return gw.SetEnabled(ctx(), "sensor_001", true) }, "sensor_001", &validate.Device{Secret: []byte(secret1), Enabled: true}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			loads := c.Loads()
			if err := s.change(); err != nil {
				t.Fatal(err)
			}
			if reloaded, err := c.Refresh(ctx()); err != nil || !reloaded || c.Loads() != loads+1 {
				t.Fatalf("Refresh = %v, %v (loads %d → %d)", reloaded, err, loads, c.Loads())
			}
			d, err := lookup(s.id)
			if s.want == nil {
				if !errors.Is(err, validate.ErrUnknownDevice) {
					t.Fatalf("Device = %+v, %v; want unknown", d, err)
				}
				return
			}
			if err != nil || string(d.Secret) != string(s.want.Secret) || d.Enabled != s.want.Enabled {
				t.Fatalf("Device = %+v, %v; want %+v", d, err, *s.want)
			}
		})
	}
	if c.Len() != 1 {
		t.Fatalf("Len = %d", c.Len())
	}
}

func TestCacheRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	gw, cli := open(t, path), open(t, path)
	c, err := registry.NewCache(ctx(), gw)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runCtx, cancel := context.WithCancel(ctx())
	done := make(chan struct{})
	go func() { c.Run(runCtx, 5*time.Millisecond, func(err error) { t.Error(err) }); close(done) }()
	if err := cli.Add(ctx(), "sensor_001", secret1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Device(ctx(), "sensor_001"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not pick up the new device within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}

var _ validate.KeyStore = (*registry.Cache)(nil)

// TestCacheMissReloads: a lookup of a device added since the last load
// re-reads the registry at once, but at most once per MissReloadEvery for
// all misses together, so unknown ids cannot turn into a load.
func TestCacheMissReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	now := time.Unix(1_700_000_000, 0)
	gw, err := registry.Open(ctx(), path, registry.WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	cli := open(t, path)
	c, err := registry.NewCache(ctx(), gw)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := cli.Add(ctx(), "sensor_001", secret1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Device(ctx(), "sensor_001"); err != nil {
		t.Fatalf("device added after the load: %v, want found by the miss reload", err)
	}
	loads := c.Loads()
	for range 100 { // a flood of unknown ids within one interval: no reload
		if _, err := c.Device(ctx(), "nobody"); !errors.Is(err, validate.ErrUnknownDevice) {
			t.Fatalf("unknown = %v", err)
		}
	}
	if err := cli.Add(ctx(), "sensor_002", secret2); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Device(ctx(), "sensor_002"); !errors.Is(err, validate.ErrUnknownDevice) {
		t.Fatalf("within MissReloadEvery of the last miss reload: %v, want unknown (rate-limited)", err)
	}
	if c.Loads() != loads {
		t.Fatalf("loads %d → %d within one interval", loads, c.Loads())
	}
	now = now.Add(registry.MissReloadEvery)
	if _, err := c.Device(ctx(), "sensor_002"); err != nil {
		t.Fatalf("after MissReloadEvery: %v", err)
	}
}

// TestCacheRereadAfterRotate: a key rotated in by another process is
// served by Reread before any refresh, at most once per MissReloadEvery
// for all devices together, and not at all when nothing changed.
func TestCacheRereadAfterRotate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	now := time.Unix(1_700_000_000, 0)
	gw, err := registry.Open(ctx(), path, registry.WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	cli := open(t, path)
	if err := cli.Add(ctx(), "sensor_001", secret1); err != nil {
		t.Fatal(err)
	}
	c, err := registry.NewCache(ctx(), gw)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, changed, _ := c.Reread(ctx(), "sensor_001"); changed {
		t.Fatal("Reread with nothing changed reported a change")
	}
	if _, err := cli.Rotate(ctx(), "sensor_001", secret2, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, changed, _ := c.Reread(ctx(), "sensor_001"); changed {
		t.Fatal("a second Reread within MissReloadEvery re-read the registry")
	}
	now = now.Add(registry.MissReloadEvery)
	d, changed, err := c.Reread(ctx(), "sensor_001")
	if err != nil || !changed || string(d.Secret) != secret2 || len(d.Keys) != 2 {
		t.Fatalf("Reread after a rotate: changed %v, %d keys, newest is the new secret %v, %v", changed, len(d.Keys), string(d.Secret) == secret2, err)
	}
}
