package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/storage"
)

func writeFile(t *testing.T, path, data string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// registrySecrets opens the store's registry and returns every device's
// newest secret (sealed ones opened with the KEK of the environment).
func registrySecrets(t *testing.T, c storage.Config, db string) map[string][]byte {
	t.Helper()
	var kek *registry.KEK
	if p := os.Getenv("IOTGW_SECURITY_KEK_FILE"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if kek, err = registry.ParseKEK(b); err != nil {
			t.Fatal(err)
		}
	}
	got, err := storage.DeviceSecrets(context.Background(), c, db, kek)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func readSecretsCSV(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 || strings.Join(recs[0], ",") != "id,secret" {
		t.Fatalf("secrets file header %v", recs)
	}
	out := map[string]string{}
	for _, r := range recs[1:] {
		out[r[0]] = r[1]
	}
	return out
}

// TestDeviceImport runs import and export on each storage engine, sealed
// under a KEK: all or nothing, every bad line listed, generated secrets
// only in a new 0600 file, --skip-existing, one audit entry per device.
func TestDeviceImport(t *testing.T) {
	for _, engine := range []string{"sqlite", "postgres"} {
		t.Run(engine, func(t *testing.T) {
			dir := t.TempDir()
			db := filepath.Join(dir, "registry.db")
			cfg := storage.DefaultConfig()
			t.Setenv("IOTGW_REGISTRY_PATH", "")
			t.Setenv("IOTGW_STORAGE_ENGINE", "")
			t.Setenv("IOTGW_STORAGE_DSN", "")
			var where []string
			if engine == "postgres" {
				dsn := pgtest.New(t)
				t.Setenv("IOTGW_STORAGE_ENGINE", "postgres")
				t.Setenv("IOTGW_STORAGE_DSN", dsn)
				cfg.Engine, cfg.DSN = storage.Postgres, dsn
			} else {
				where = []string{"--db", db}
			}
			kek := filepath.Join(dir, "kek")
			if r := runCLI(t, "", "kek", "new", kek); r.code != 0 {
				t.Fatalf("kek new: %+v", r)
			}
			t.Setenv("IOTGW_SECURITY_KEK_FILE", kek)
			run := func(args ...string) cliResult {
				t.Helper()
				return runCLI(t, "", append(args, where...)...)
			}
			if r := run("device", "add", "existing"); r.code != 0 {
				t.Fatalf("device add: %+v", r)
			}
			before := registrySecrets(t, cfg, db)["existing"]

			// Every bad line is listed; nothing is imported.
			bad := writeFile(t, filepath.Join(dir, "bad.csv"), strings.Join([]string{
				"id,secret,enabled,freshness",
				"good_1,,true,",
				"bad/id,,,",
				"short,tooshort,,",
				"good_1,,,",
				"off,,maybe,",
				"gateway,,,",
				"counter,,,sometimes",
				"good_2,,,timestamp",
				"a,b",
			}, "\n")+"\n")
			out := filepath.Join(dir, "bad-secrets.csv")
			r := run("device", "import", bad, "--secrets-out", out)
			if r.code != 1 || r.err.Error() != bad+": 7 bad lines; nothing imported" {
				t.Fatalf("bad import: %+v", r)
			}
			for _, line := range []string{":3: bad device id", ":4: device short: secret must be", ":5: device good_1 is listed twice (first on line 2)",
				":6: device off: enabled must be", ":7: device id \"gateway\" is reserved", ":8: device counter: freshness \"sometimes\"", ":10: 2 fields"} {
				if !strings.Contains(r.stderr, bad+line) {
					t.Errorf("stderr lacks %q:\n%s", line, r.stderr)
				}
			}
			if fileExists(out) {
				t.Error("secrets file written for a refused import")
			}
			if n := len(registrySecrets(t, cfg, db)); n != 1 {
				t.Fatalf("%d devices after a refused import, want 1", n)
			}

			good := writeFile(t, filepath.Join(dir, "fleet.csv"), "# a comment\nid,secret,enabled\nd1,,\nd2,given-secret-0123456789,false\nd3,,true\nexisting,,\n")
			if r := run("device", "import", good); r.code != 2 || !strings.Contains(r.err.Error(), "--secrets-out") {
				t.Fatalf("without --secrets-out: %+v", r)
			}
			r = run("device", "import", good, "--secrets-out", out)
			if r.code != 1 || !strings.Contains(r.err.Error(), "1 device already exists: existing") || fileExists(out) {
				t.Fatalf("over an existing device: %+v", r)
			}
			r = run("device", "import", good, "--secrets-out", out, "--skip-existing")
			if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "imported 3 devices; skipped 1") {
				t.Fatalf("import --skip-existing: %+v", r)
			}
			fi, err := os.Stat(out)
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("secrets file: %v %v", fi, err)
			}
			gen := readSecretsCSV(t, out)
			got := registrySecrets(t, cfg, db)
			if len(gen) != 2 || gen["d1"] == "" || gen["d3"] == "" || string(got["d1"]) != gen["d1"] || string(got["d3"]) != gen["d3"] ||
				string(got["d2"]) != "given-secret-0123456789" || string(got["existing"]) != string(before) {
				t.Fatalf("secrets file %v, registry %q", gen, got)
			}
			for _, s := range gen {
				if strings.Contains(r.stderr+r.stdout, s) {
					t.Fatal("a generated secret reached the terminal")
				}
			}
			if r := run("device", "import", good, "--secrets-out", out, "--skip-existing"); r.code != 1 || !strings.Contains(r.err.Error(), "already exists") {
				t.Fatalf("--secrets-out over an existing file: %+v", r)
			}
			tail := run("audit", "tail", "-n", "20")
			if n := strings.Count(tail.stdout, "device.import"); n != 3 {
				t.Fatalf("%d device.import audit entries, want 3:\n%s", n, tail.stdout)
			}

			// export: never secrets; CSV and JSON lines.
			exp := run("device", "export")
			if exp.code != 0 || !strings.HasPrefix(exp.stdout, "id,enabled,created_at,revoked_at,freshness\n") || !strings.Contains(exp.stdout, "\nd2,false,") {
				t.Fatalf("export: %+v", exp)
			}
			expJ := run("device", "export", "--format", "jsonl")
			if strings.Count(expJ.stdout, "\n") != 4 || !strings.Contains(expJ.stdout, `{"id":"d2","enabled":false,"created_at":"`) {
				t.Fatalf("export jsonl: %+v", expJ)
			}
			for id, s := range got {
				if strings.Contains(exp.stdout+expJ.stdout, string(s)) {
					t.Fatalf("export wrote %s's secret", id)
				}
			}

			// A JSON-lines round trip into a fresh SQLite registry.
			if engine == "sqlite" {
				jl := writeFile(t, filepath.Join(dir, "export.jsonl"), expJ.stdout)
				other := filepath.Join(dir, "other.db")
				t.Setenv("IOTGW_SECURITY_KEK_FILE", "")
				r := runCLI(t, "", "device", "import", jl, "--secrets-out", filepath.Join(dir, "other.jsonl"), "--db", other)
				if r.code != 0 || !strings.Contains(r.stderr, "imported 4 devices") {
					t.Fatalf("round trip: %+v", r)
				}
				list := runCLI(t, "", "device", "list", "--db", other)
				if !regexp.MustCompile(`d2\s+disabled`).MatchString(list.stdout) {
					t.Fatalf("round trip lost d2's state:\n%s", list.stdout)
				}
				var line struct{ ID, Secret string }
				b, _ := os.ReadFile(filepath.Join(dir, "other.jsonl"))
				if err := json.Unmarshal([]byte(strings.SplitN(string(b), "\n", 2)[0]), &line); err != nil || line.Secret == "" {
					t.Fatalf("jsonl secrets file %q: %v", b, err)
				}
			}
		})
	}
}

// TestDeviceImportCSR imports devices with CSRs: certificates signed for
// the good ones; a CSR for another CN is a bad line; a certificate that
// cannot be written aborts the whole import and removes what was written.
func TestDeviceImportCSR(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "registry.db")
	certs := filepath.Join(dir, "certs")
	t.Setenv("IOTGW_SECURITY_KEK_FILE", "")
	if r := runCLI(t, "", "pki", "init", "--dir", certs); r.code != 0 {
		t.Fatalf("pki init: %v", r.err)
	}
	pemOf := func(id, subj string) string {
		b, err := os.ReadFile(opensslCSR(t, dir, id, subj, p256...))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	line := func(id, csr string) string {
		b, _ := json.Marshal(map[string]string{"id": id, "csr": csr})
		return string(b)
	}
	badFile := writeFile(t, filepath.Join(dir, "bad.jsonl"), line("c1", pemOf("c1", "/CN=c1"))+"\n"+line("c2", pemOf("c2x", "/CN=someone_else"))+"\n"+`{"id":"c3","colour":"red"}`+"\n")
	r := runCLI(t, "", "device", "import", badFile, "--certs", certs, "--db", db, "--secrets-out", filepath.Join(dir, "s.jsonl"))
	if r.code != 1 || !strings.Contains(r.stderr, badFile+":2: device c2: CSR Common Name") || !strings.Contains(r.stderr, badFile+":3: not a JSON object") {
		t.Fatalf("bad CSR import: %+v", r)
	}

	// c2's certificate exists already: the whole import is undone.
	if err := pki.Issue(certs, "c2", time.Now()); err != nil {
		t.Fatal(err)
	}
	f := writeFile(t, filepath.Join(dir, "fleet.jsonl"), line("c1", pemOf("c1", "/CN=c1"))+"\n"+line("c2", pemOf("c2", "/CN=c2"))+"\n")
	secrets := filepath.Join(dir, "s.jsonl")
	r = runCLI(t, "", "device", "import", f, "--certs", certs, "--db", db, "--secrets-out", secrets)
	crt1, _ := pki.DeviceCert(certs, "c1")
	if r.code != 1 || !strings.Contains(r.err.Error(), "c2.crt already exists; nothing imported") || fileExists(crt1) || fileExists(secrets) {
		t.Fatalf("import with a clashing certificate: %+v; c1.crt %v, secrets %v", r, fileExists(crt1), fileExists(secrets))
	}
	if l := runCLI(t, "", "device", "list", "--db", db); strings.Contains(l.stdout, "c1") {
		t.Fatalf("c1 registered by an import that failed:\n%s", l.stdout)
	}
	// Certificates are signed before the transaction: one that then fails
	// (here: the secrets file cannot be created) removes them again.
	f5 := writeFile(t, filepath.Join(dir, "c5.jsonl"), line("c5", pemOf("c5", "/CN=c5"))+"\n")
	r = runCLI(t, "", "device", "import", f5, "--certs", certs, "--db", db, "--secrets-out", filepath.Join(dir, "no", "such", "dir"))
	crt5, _ := pki.DeviceCert(certs, "c5")
	if r.code != 1 || fileExists(crt5) {
		t.Fatalf("import whose transaction failed: %+v; c5.crt left behind: %v", r, fileExists(crt5))
	}
	if l := runCLI(t, "", "device", "list", "--db", db); strings.Contains(l.stdout, "c5") {
		t.Fatalf("c5 registered by an import that failed:\n%s", l.stdout)
	}
	crt2, key2 := pki.DeviceCert(certs, "c2")
	os.Remove(crt2)
	os.Remove(key2)
	r = runCLI(t, "", "device", "import", f, "--certs", certs, "--db", db, "--secrets-out", secrets, "--days", "10")
	if r.code != 0 || !fileExists(crt1) || !fileExists(crt2) {
		t.Fatalf("CSR import: %+v", r)
	}
	if c := readPEMCert(t, crt2); c.Subject.CommonName != "c2" {
		t.Fatalf("c2 certificate CN %q", c.Subject.CommonName)
	}
	if tail := runCLI(t, "", "audit", "tail", "--db", db); strings.Count(tail.stdout, "device.import.csr") != 2 {
		t.Fatalf("audit:\n%s", tail.stdout)
	}
}

// TestImportRefusesARegistryChangedMeanwhile: certificates are signed
// before the transaction, so the transaction must add exactly the devices
// they were signed for; a device someone else added or removed in between
// refuses the import.
func TestImportRefusesARegistryChangedMeanwhile(t *testing.T) {
	byID := map[string]importDevice{
		"a": {dev: registry.NewDevice{ID: "a"}, csr: []byte("x")},
		"b": {dev: registry.NewDevice{ID: "b"}, csr: []byte("x")},
		"c": {dev: registry.NewDevice{ID: "c"}},
	}
	imp := &importer{}
	for _, tc := range []struct {
		name   string
		added  []string
		signed []string
		ok     bool
	}{
		{"as signed", []string{"a", "b", "c"}, []string{"a", "b"}, true},
		{"a device removed meanwhile is added unsigned", []string{"a", "b", "c"}, []string{"a"}, false},
		{"a device added meanwhile is skipped, its certificate signed", []string{"a", "c"}, []string{"a", "b"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var added []registry.NewDevice
			for _, id := range tc.added {
				added = append(added, byID[id].dev)
			}
			signed := map[string]bool{}
			for _, id := range tc.signed {
				signed[id] = true
			}
			if err := imp.beforeCommit(added, byID, signed); (err == nil) != tc.ok {
				t.Fatalf("beforeCommit = %v, want ok %v", err, tc.ok)
			}
		})
	}
}
