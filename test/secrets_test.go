package test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/test/harness"
)

// newKEKFile writes a fresh KEK (64 hex characters) with `iotgw kek new`.
func (f *fixture) newKEKFile(name string) string {
	f.t.Helper()
	p := filepath.Join(f.dir, name)
	if out, err := runCLI(f.bin, "", "kek", "new", p); err != nil {
		f.t.Fatalf("kek new: %v: %s", err, out)
	}
	return p
}

// addSealedDevice issues a certificate and registers the device through the
// real CLI, with the KEK from the environment as an operator would.
func (f *fixture) addSealedDevice(id, kek string) string {
	f.t.Helper()
	harness.IssueDevice(f.t, f.certs, id)
	cmd := exec.Command(f.bin, "device", "add", id, "--db", f.db)
	cmd.Env = append(os.Environ(), "IOTGW_SECURITY_KEK_FILE="+kek)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		f.t.Fatalf("device add %s: %v: %s", id, err, stderr.String())
	}
	if strings.Contains(stderr.String(), "NOT sealed") {
		f.t.Fatalf("device add with a KEK warned: %s", stderr.String())
	}
	secret := strings.TrimSpace(stdout.String())
	f.secrets[id] = secret
	return secret
}

// secretForms are the byte strings a leaked secret could appear as: the
// secret itself, its hex encoding, (for a hex secret) its decoded bytes,
// and each half.
func secretForms(secret string) [][]byte {
	forms := [][]byte{[]byte(secret), []byte(hex.EncodeToString([]byte(secret)))}
	if raw, err := hex.DecodeString(secret); err == nil {
		forms = append(forms, raw)
	}
	if len(secret) >= 32 { // a half is still a leak
		forms = append(forms, []byte(secret[:len(secret)/2]), []byte(secret[len(secret)/2:]))
	}
	return forms
}

// grepDir returns "file: secret…" for every secret found in any file
// under dir (databases, WAL and SHM files, logs, config), except skip.
func grepDir(t *testing.T, dir string, secrets map[string]string, skip string) (found []string, checked []string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if e.IsDir() || p == skip {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue // removed meanwhile (a -wal at close)
		}
		checked = append(checked, e.Name())
		for id, s := range secrets {
			for _, form := range secretForms(s) {
				if bytes.Contains(b, form) {
					found = append(found, e.Name()+": secret of "+id)
				}
			}
		}
	}
	return found, checked
}

// TestSealedSecretsEndToEnd: devices added through the CLI with a KEK, a
// real iotgw serve with that KEK accepting their signed messages, and not
// one secret (raw, hex, or decoded) in the registry file, its -wal or -shm,
// the outbox or the logs, while the gateway runs and after it stopped.
func TestSealedSecretsEndToEnd(t *testing.T) {
	f := newFixture(t)
	kek := f.newKEKFile("kek")
	ids := []string{"sealed_001", "sealed_002", "sealed_003"}
	for _, id := range ids {
		f.addSealedDevice(id, kek)
	}
	g := f.startGateway(gatewayOpts{extra: "security:\n  kek_file: " + kek + "\n  require_kek: true\n"})
	if v := g.metric("iotgw_secrets_sealed"); v != 1 {
		t.Fatalf("iotgw_secrets_sealed = %v, want 1", v)
	}
	for i, id := range ids {
		d := f.device(id)
		raw, _ := d.signed(fmt.Sprintf(`{"n":%d}`, i), time.Now().Unix())
		d.publish("", raw)
		r, ok := d.nextReply(10 * time.Second)
		if !ok || !r.valid {
			t.Fatalf("%s: no valid signed reply (got %v)", id, ok)
		}
	}
	f.backend.waitCount(t, len(ids), 10*time.Second)
	if _, err := os.Stat(f.db + "-wal"); err != nil {
		t.Fatalf("the registry's WAL should exist while the gateway runs: %v", err)
	}
	// The KEK must not leak either (it is only in its own file).
	kekBytes, err := os.ReadFile(kek)
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]string{"the KEK": strings.TrimSpace(string(kekBytes))}
	for id, s := range f.secrets {
		all[id] = s
	}
	found, checked := grepDir(t, f.dir, all, kek)
	if len(found) > 0 {
		t.Fatalf("while running: %v", found)
	}
	for _, want := range []string{"registry.db", "registry.db-wal", "registry.db-shm"} {
		if !contains(checked, want) {
			t.Fatalf("%s not checked (checked %v)", want, checked)
		}
	}
	if code := g.signal(syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("gateway exit code %d", code)
	}
	if found, _ := grepDir(t, f.dir, all, kek); len(found) > 0 {
		t.Fatalf("after stop: %v", found)
	}
	log, _ := os.ReadFile(g.logPath)
	if bytes.Contains(log, []byte("NOT sealed")) {
		t.Fatal("gateway with a KEK warned that secrets are not sealed")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// serveOnce runs iotgw serve with the fixture's config plus extra and
// returns its output and exit code; it must exit by itself.
func (f *fixture) serveOnce(extra string) (string, int) {
	f.t.Helper()
	cfg := filepath.Join(f.dir, "once.yaml")
	if err := os.WriteFile(cfg, []byte(f.config(harness.FreePort(f.t), gatewayOpts{extra: extra})), 0o600); err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.bin, "serve", "--config", cfg)
	out, _ := cmd.CombinedOutput()
	if ctx.Err() != nil {
		f.t.Fatalf("serve did not exit by itself: %s", out)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// TestGatewayRefusesWithoutRightKEK: on a sealed registry, a gateway
// without the KEK or with another one refuses to start with one line; with
// require_kek and no KEK it refuses even a plaintext registry; a plaintext
// gateway starts but warns and reports iotgw_secrets_sealed 0.
func TestGatewayRefusesWithoutRightKEK(t *testing.T) {
	f := newFixture(t)
	kek := f.newKEKFile("kek")
	other := f.newKEKFile("other")
	plain := filepath.Join(f.dir, "plain.db")
	sealedDB := f.db
	f.addSealedDevice("k_001", kek)
	withPlain := filepath.Join(f.dir, "with-plain.db")
	r, err := registry.Open(context.Background(), withPlain)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Add(context.Background(), "p_001", "a-plaintext-secret-0123456789"); err != nil {
		t.Fatal(err)
	}
	r.Close()
	// swapped: a copy of a sealed registry whose two rows' ciphertexts were
	// swapped with SQL, as an attacker with write access to the file could.
	swapped := filepath.Join(f.dir, "swapped.db")
	f.db = swapped
	f.addSealedDevice("s_001", kek)
	f.addSealedDevice("s_002", kek)
	f.db = sealedDB
	db, err := sql.Open("sqlite3", swapped)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE device_keys SET secret = CASE device_id
		WHEN 's_001' THEN (SELECT secret FROM device_keys WHERE device_id = 's_002')
		ELSE (SELECT secret FROM device_keys WHERE device_id = 's_001') END`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	tests := []struct {
		name  string
		db    string
		extra string
		want  string
	}{
		{"no KEK on a sealed registry", sealedDB, "", "registry secrets are sealed: set security.kek_file"},
		{"wrong KEK", sealedDB, "security:\n  kek_file: " + other + "\n", "wrong KEK"},
		{"missing KEK file", sealedDB, "security:\n  kek_file: " + filepath.Join(f.dir, "nope") + "\n", "security.kek_file"},
		{"swapped sealed rows", swapped, "security:\n  kek_file: " + kek + "\n", "device s_001 key 1: sealed secret does not open"},
		{"KEK on a registry with plaintext secrets", withPlain, "security:\n  kek_file: " + kek + "\n", "iotgw kek rotate --new"},
		{"require_kek without a KEK", plain, "security:\n  require_kek: true\n", "security.require_kek: device secrets are NOT sealed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.db = tc.db
			defer func() { f.db = sealedDB }()
			out, code := f.serveOnce(tc.extra)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if code == 0 || len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Fatalf("exit %d, output %q: want one line containing %q", code, out, tc.want)
			}
			t.Logf("exit %d: %s", code, lines[0])
		})
	}

	// A world-readable KEK file is refused.
	if err := os.Chmod(other, 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := f.serveOnce("security:\n  kek_file: " + other + "\n")
	if code == 0 || !strings.Contains(out, "chmod 600") {
		t.Fatalf("0644 KEK: exit %d, %q", code, out)
	}

	// Plaintext: starts, warns at start, metric says 0.
	f.db = plain
	r, err = registry.Open(context.Background(), plain)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	g := f.startGateway(gatewayOpts{})
	if v := g.metric("iotgw_secrets_sealed"); v != 0 {
		t.Fatalf("iotgw_secrets_sealed = %v, want 0", v)
	}
	log, _ := os.ReadFile(g.logPath)
	if !bytes.Contains(log, []byte("device secrets are NOT sealed: set security.kek_file")) {
		t.Fatalf("no warning in the log:\n%s", log)
	}
}

// verifiesWith reports whether a reply's signature verifies with the
// downlink key of secret (docs/PROTOCOL.md, section 4).
func verifiesWith(r reply, secret string) bool {
	return envelope.Verify(envelope.NewDownlinkMAC([]byte(secret)), &r.env)
}
