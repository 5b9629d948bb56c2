package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/registry"
)

// TestKEKAndRotateCommands walks a registry from plaintext to sealed,
// through a key rotation, a KEK rotation and a revocation.
func TestKEKAndRotateCommands(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "registry.db")
	k1, k2 := filepath.Join(dir, "k1"), filepath.Join(dir, "k2")
	t.Setenv("IOTGW_SECURITY_KEK_FILE", "")
	t.Setenv("IOTGW_SECURITY_REQUIRE_KEK", "")

	res := runCLI(t, "", "device", "add", "s1", "--db", db)
	if res.code != 0 || !strings.Contains(res.stderr, "device secrets are NOT sealed: set security.kek_file") {
		t.Fatalf("add without a KEK: %+v", res)
	}
	secret1 := res.stdout
	for _, k := range []string{k1, k2} {
		if res := runCLI(t, "", "kek", "new", k); res.code != 0 {
			t.Fatalf("kek new: %+v", res)
		}
	}
	if res := runCLI(t, "", "kek", "new", k1); res.code != 1 || !strings.Contains(res.err.Error(), "already exists") {
		t.Fatalf("kek new over a file: %+v", res)
	}
	// A KEK configured on a plaintext registry is refused until sealed.
	t.Setenv("IOTGW_SECURITY_KEK_FILE", k1)
	if res := runCLI(t, "", "device", "list", "--db", db); res.code != 1 || !strings.Contains(res.err.Error(), "kek rotate") {
		t.Fatalf("list of a plaintext registry with a KEK: %+v", res)
	}
	t.Setenv("IOTGW_SECURITY_KEK_FILE", "")
	if res := runCLI(t, "", "kek", "rotate", "--new", k1, "--db", db); res.code != 0 || !strings.Contains(res.stdout, "sealed 1 device keys") {
		t.Fatalf("kek rotate sealing a plaintext registry: %+v", res)
	}
	if res := runCLI(t, "", "device", "add", "s2", "--db", db); res.code != 1 || !strings.Contains(res.err.Error(), "sealed") {
		t.Fatalf("add to a sealed registry without the KEK: %+v", res)
	}

	t.Setenv("IOTGW_SECURITY_KEK_FILE", k1)
	res = runCLI(t, "", "device", "add", "s2", "--db", db)
	if res.code != 0 || strings.Contains(res.stderr, "NOT sealed") || !hex64.MatchString(res.stdout) {
		t.Fatalf("add with the KEK: %+v", res)
	}
	res = runCLI(t, "", "device", "rotate", "s1", "--overlap", "1h", "--db", db)
	if res.code != 0 || !hex64.MatchString(res.stdout) || res.stdout == secret1 || !strings.Contains(res.stderr, "key 2") {
		t.Fatalf("rotate: %+v", res)
	}
	secret2 := res.stdout
	res = runCLI(t, "", "device", "show", "s1", "--db", db)
	if res.code != 0 || !strings.Contains(res.stdout, "sealed:  yes") || !strings.Contains(res.stdout, "key 1:") ||
		!strings.Contains(res.stdout, "key 2:") || !strings.Contains(res.stdout, "expires never") {
		t.Fatalf("show: %+v", res)
	}
	for _, s := range []string{secret1, secret2} {
		if strings.Contains(res.stdout, strings.TrimSpace(s)) {
			t.Fatal("show printed a secret")
		}
	}
	if res := runCLI(t, "a-secret-from-stdin-0123\n", "device", "rotate", "s2", "--secret-stdin", "--overlap", "0s", "--db", db); res.code != 0 || res.stdout != "" {
		t.Fatalf("rotate --secret-stdin: %+v", res)
	}
	if res := runCLI(t, "", "device", "rotate", "s2", "--overlap", "-1s", "--db", db); res.code != 2 {
		t.Fatalf("negative overlap: %+v", res)
	}
	if res := runCLI(t, "", "device", "rotate", "ghost", "--db", db); res.code != 1 || !strings.Contains(res.err.Error(), "not found") {
		t.Fatalf("rotate unknown: %+v", res)
	}

	// KEK rotation: the old KEK no longer opens the registry.
	if res := runCLI(t, "", "kek", "rotate", "--new", k2, "--db", db); res.code != 0 || !strings.Contains(res.stdout, "re-sealed 4 device keys") {
		t.Fatalf("kek rotate: %+v", res)
	}
	if res := runCLI(t, "", "device", "list", "--db", db); res.code != 1 || !strings.Contains(res.err.Error(), "wrong KEK") || strings.Count(res.err.Error(), "\n") != 0 {
		t.Fatalf("list with the old KEK: %+v", res)
	}
	t.Setenv("IOTGW_SECURITY_KEK_FILE", k2)

	// Revoked: show says so, enable refuses with one line.
	r, err := registry.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Revoke(context.Background(), "s2"); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if res := runCLI(t, "", "device", "show", "s2", "--db", db); !strings.Contains(res.stdout, "state:   revoked") || !strings.Contains(res.stdout, "revoked: ") {
		t.Fatalf("show revoked: %+v", res)
	}
	if res := runCLI(t, "", "device", "list", "--db", db); !strings.Contains(res.stdout, "s2      revoked") {
		t.Fatalf("list revoked: %q", res.stdout)
	}
	if res := runCLI(t, "", "device", "enable", "s2", "--db", db); res.code != 1 || !strings.Contains(res.err.Error(), "revoked") {
		t.Fatalf("enable revoked: %+v", res)
	}

	// require_kek without a KEK is fatal for add.
	t.Setenv("IOTGW_SECURITY_KEK_FILE", "")
	t.Setenv("IOTGW_SECURITY_REQUIRE_KEK", "true")
	if res := runCLI(t, "", "device", "add", "s3", "--db", filepath.Join(dir, "other.db")); res.code != 1 || !strings.Contains(res.err.Error(), "security.require_kek") {
		t.Fatalf("add with require_kek and no KEK: %+v", res)
	}
}

// TestDeviceConfigFlag: --config supplies registry.path and
// security.kek_file to the device commands.
func TestDeviceConfigFlag(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "cfg.db")
	kek := filepath.Join(dir, "kek")
	t.Setenv("IOTGW_REGISTRY_PATH", "")
	t.Setenv("IOTGW_SECURITY_KEK_FILE", "")
	t.Setenv("IOTGW_SECURITY_REQUIRE_KEK", "")
	if r := runCLI(t, "", "kek", "new", kek); r.code != 0 {
		t.Fatal(r.err)
	}
	cfg := filepath.Join(dir, "iotgw.yaml")
	if err := os.WriteFile(cfg, []byte("registry:\n  path: "+db+"\nsecurity:\n  kek_file: "+kek+"\n  require_kek: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, "", "device", "add", "sensor_001", "--config", cfg); r.code != 0 || strings.Contains(r.stderr, "NOT sealed") {
		t.Fatalf("add --config: %+v", r)
	}
	r, err := registry.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.Sealed() {
		t.Fatal("device add --config did not seal with the configured KEK")
	}
}
