package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/sim"
	"github.com/iotgw/iotgw/pkg/storage"
)

// TestCommandsOnPostgres runs the registry and audit commands against a
// PostgreSQL registry: once chosen by the environment, once by --config.
// Every change lands in the one shared registry and its audit chain, and
// --db (a SQLite file) is refused rather than silently used.
func TestCommandsOnPostgres(t *testing.T) {
	for _, via := range []string{"env", "config"} {
		t.Run(via, func(t *testing.T) {
			dir := t.TempDir()
			dsn := pgtest.New(t)
			k1, k2 := filepath.Join(dir, "k1"), filepath.Join(dir, "k2")
			t.Setenv("IOTGW_SECURITY_KEK_FILE", "")
			t.Setenv("IOTGW_SECURITY_REQUIRE_KEK", "")
			t.Setenv("IOTGW_REGISTRY_PATH", "")
			var cfg []string
			if via == "env" {
				t.Setenv("IOTGW_STORAGE_ENGINE", "postgres")
				t.Setenv("IOTGW_STORAGE_DSN", dsn)
			} else {
				t.Setenv("IOTGW_STORAGE_ENGINE", "")
				t.Setenv("IOTGW_STORAGE_DSN", "")
				p := filepath.Join(dir, "iotgw.yaml")
				if err := os.WriteFile(p, fmt.Appendf(nil, "storage:\n  engine: postgres\n  dsn: %q\n", dsn), 0o600); err != nil {
					t.Fatal(err)
				}
				cfg = []string{"--config", p}
			}
			run := func(stdin string, args ...string) cliResult {
				t.Helper()
				return runCLI(t, stdin, append(args, cfg...)...)
			}
			for _, k := range []string{k1, k2} {
				if res := runCLI(t, "", "kek", "new", k); res.code != 0 {
					t.Fatalf("kek new: %+v", res)
				}
			}
			t.Setenv("IOTGW_SECURITY_KEK_FILE", k1)
			res := run("", "device", "add", "s1")
			if res.code != 0 || !hex64.MatchString(res.stdout) || strings.Contains(res.stderr, "NOT sealed") {
				t.Fatalf("device add: %+v", res)
			}
			secret1 := strings.TrimSpace(res.stdout)
			if res := run("", "device", "add", "s1"); res.code != 1 || !strings.Contains(res.err.Error(), "already exists") {
				t.Fatalf("duplicate add: %+v", res)
			}
			if res := run("", "device", "rotate", "s1", "--overlap", "1h"); res.code != 0 || !strings.Contains(res.stderr, "key 2") {
				t.Fatalf("device rotate: %+v", res)
			}
			if res := run("", "device", "disable", "s1"); res.code != 0 {
				t.Fatalf("device disable: %+v", res)
			}
			if res := run("", "device", "list"); res.code != 0 || !strings.Contains(res.stdout, "s1") || !strings.Contains(res.stdout, "disabled") {
				t.Fatalf("device list: %+v", res)
			}
			if res := run("", "device", "enable", "s1"); res.code != 0 {
				t.Fatalf("device enable: %+v", res)
			}
			if res := run("", "kek", "rotate", "--new", k2); res.code != 0 || !strings.Contains(res.stdout, "re-sealed 2 device keys") {
				t.Fatalf("kek rotate: %+v", res)
			}
			if res := run("", "device", "show", "s1"); res.code != 1 || !strings.Contains(res.err.Error(), "wrong KEK") {
				t.Fatalf("show with the old KEK after kek rotate: %+v", res)
			}
			t.Setenv("IOTGW_SECURITY_KEK_FILE", k2)
			if res := run("", "device", "show", "s1"); res.code != 0 || !strings.Contains(res.stdout, "state:   enabled") || !strings.Contains(res.stdout, "sealed:  yes") {
				t.Fatalf("device show: %+v", res)
			}
			res = run("", "device", "add", "s2")
			if res.code != 0 {
				t.Fatalf("device add s2: %+v", res)
			}
			secret2 := strings.TrimSpace(res.stdout)
			if res := run("", "device", "remove", "s1"); res.code != 0 {
				t.Fatalf("device remove: %+v", res)
			}
			res = run("", "audit", "verify")
			if res.code != 0 || !strings.Contains(res.stdout, "audit chain ok: 7 entries") {
				t.Fatalf("audit verify: %+v", res)
			}
			res = run("", "audit", "tail", "-n", "10")
			for _, action := range []string{"device.add", "device.rotate", "device.disable", "device.enable", "kek.rotate", "device.remove"} {
				if res.code != 0 || !strings.Contains(res.stdout, action) {
					t.Fatalf("audit tail lacks %s: %+v", action, res)
				}
			}
			if strings.Contains(res.stdout+res.stderr, secret1) {
				t.Fatal("a secret in the audit output")
			}
			for _, args := range [][]string{{"device", "list", "--db", filepath.Join(dir, "r.db")}, {"audit", "verify", "--db", filepath.Join(dir, "r.db")}} {
				if res := run("", args...); res.code != 2 || !strings.Contains(res.err.Error(), "--db names a SQLite file") {
					t.Fatalf("%v with engine postgres: %+v", args, res)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "r.db")); err == nil {
				t.Fatal("a SQLite file was created beside the PostgreSQL registry")
			}
			// What the commands did is in PostgreSQL: s2 alone, sealed
			// under k2.
			sc := storage.DefaultConfig()
			sc.Engine, sc.DSN = storage.Postgres, dsn
			k, err := registry.LoadKEK(k2)
			if err != nil {
				t.Fatal(err)
			}
			r, closeReg, err := storage.OpenRegistry(context.Background(), sc, "", registry.WithKEK(k))
			if err != nil {
				t.Fatal(err)
			}
			defer closeReg() //nolint:errcheck // test
			if list, err := r.List(context.Background()); err != nil || len(list) != 1 || list[0].ID != "s2" || !r.Sealed() {
				t.Fatalf("registry in postgres: %+v, %v (sealed %v); want s2 alone, sealed", list, err, r.Sealed())
			}
			// iotgw sim reads the shared registry when the environment
			// names one and neither --db nor --secrets-file is given.
			if via == "env" {
				o := simOptions{Options: sim.Options{Broker: "ssl://127.0.0.1:8883", ConnectTimeout: 1}}
				if err := o.check(); err != nil || !o.shared {
					t.Fatalf("sim check with a shared registry: %v (shared %v)", err, o.shared)
				}
				got, err := secretsFromDB(context.Background(), "")
				if err != nil || string(got["s2"]) != secret2 || len(got) != 1 {
					t.Fatalf("sim secrets from postgres: %d, %v", len(got), err)
				}
			}
		})
	}
}
