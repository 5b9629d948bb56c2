package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/test/harness"
)

// TestConfigCheckMatchesServe holds each start-up refusal of `iotgw serve`
// that needs neither the broker nor the backend against `iotgw config
// check` on the same config: both fail, with the same one line. Before
// the fix config check said ok to the missing KEK file, the wrong KEK,
// the KEK file of mode 0644, the missing registry, the sealed registry
// without a KEK, the row that does not open and PostgreSQL unreachable.
// A good config passes both.
func TestConfigCheckMatchesServe(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	e, kek := newRig(t, "sqlite", "cc_d1")
	f := e.f
	other := f.newKEKFile("other")
	open := filepath.Join(f.dir, "kek-0644")
	b, err := os.ReadFile(kek)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(open, b, 0o644); err != nil { //nolint:gosec // the point: a KEK others can read
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil { // past the umask
		t.Fatal(err)
	}
	// A sealed registry with one row in the clear.
	badDB := filepath.Join(f.dir, "bad-row.db")
	copyFile(t, f.db, badDB)
	(&engineRig{f: &fixture{t: t, db: badDB}}).exec(`UPDATE device_keys SET secret = $1, sealed = $2 WHERE device_id = $3`, []byte("a-plaintext-secret-0123456789"), false, "cc_d1")
	crt, key := pki.DeviceCert(f.certs, "cc_d1")
	sec := func(k string) string { return "security:\n  kek_file: " + k + "\n" }
	tests := []struct {
		name  string
		extra string
		edit  func(string) string
		want  string
	}{
		{"missing KEK file", sec(filepath.Join(f.dir, "no-such-kek")), nil, "security.kek_file"},
		{"wrong KEK", sec(other), nil, "wrong KEK"},
		{"KEK file mode 0644", sec(open), nil, "security.kek_file"},
		{"previous KEK the same as the KEK", sec(kek) + "  previous_kek_file: " + kek + "\n", nil, "security.previous_kek_file"},
		{"missing registry", sec(kek), func(c string) string {
			return strings.Replace(c, "path: "+f.db, "path: "+filepath.Join(f.dir, "typo.db"), 1)
		}, "does not exist"},
		{"sealed registry without a KEK", "", nil, "sealed"},
		{"a key row that does not open", sec(kek), func(c string) string {
			return strings.Replace(c, "path: "+f.db, "path: "+badDB, 1)
		}, "cc_d1"},
		{"device certificate as the gateway's", sec(kek), func(c string) string {
			c = strings.Replace(c, f.certs+"/gateway.crt", crt, 1)
			return strings.Replace(c, f.certs+"/gateway.key", key, 1)
		}, "mqtt.cert_file"},
		{"PostgreSQL unreachable", sec(kek) + "storage:\n  engine: postgres\n  dsn: postgres://root@127.0.0.1:1/none?sslmode=disable&connect_timeout=2\n", nil, "127.0.0.1"},
		{"queue depth of two billion", sec(kek) + "pipeline:\n  queue_depth: 2000000000\n", nil, "pipeline.queue_depth"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.config(harness.FreePort(t), gatewayOpts{extra: tc.extra})
			if tc.edit != nil {
				cfg = tc.edit(cfg)
			}
			path := filepath.Join(t.TempDir(), "iotgw.yaml")
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			serve := runFails(t, f.bin, "serve", "--config", path)
			check := runFails(t, f.bin, "config", "check", path)
			s, c := oneErrorLine(t, serve, tc.want), oneErrorLine(t, check, tc.want)
			if s != c {
				t.Fatalf("serve and config check differ:\nserve: %s\ncheck: %s", s, c)
			}
		})
	}
	t.Run("good config", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "iotgw.yaml")
		if err := os.WriteFile(path, []byte(f.config(harness.FreePort(t), gatewayOpts{extra: sec(kek)})), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := runCLI(f.bin, "", "config", "check", path); err != nil || !strings.Contains(out, ": ok") {
			t.Fatalf("config check on a good config: %v\n%s", err, out)
		}
		if _, err := os.Stat(f.outbox()); err == nil {
			t.Fatal("config check created the outbox")
		}
	})
}

// runFails runs bin args, which must exit non-zero by itself within 30 s,
// and returns its output.
func runFails(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s did not exit by itself:\n%s", args[0], out)
	}
	if err == nil {
		t.Fatalf("iotgw %s exited 0, want a refusal:\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
