package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
)

// cliResult is what one iotgw invocation printed and its exit status.
type cliResult struct {
	stdout, stderr string
	code           int
	err            error
}

// runCLI runs iotgw with args in-process, as main does, with stdin.
func runCLI(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	root := newRoot()
	var out, errOut bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return cliResult{stdout: out.String(), stderr: errOut.String(), code: exitCode(err), err: err}
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}\n$`)

func TestDeviceCommands(t *testing.T) {
	db := filepath.Join(t.TempDir(), "registry.db")
	const given = "a-secret-given-on-stdin-0123456789"
	steps := []struct {
		name    string
		stdin   string
		args    []string
		code    int
		stdout  string // a substring of stdout
		errText string // a substring of the error
	}{
		{"list before the registry exists", "", []string{"device", "list", "--db", db}, 1, "", "does not exist"},
		{"add generates a secret", "", []string{"device", "add", "sensor_001", "--db", db}, 0, "", ""},
		{"add with a secret from stdin", given + "\n", []string{"device", "add", "sensor_002", "--secret-stdin", "--db", db}, 0, "", ""},
		{"add with a CRLF line from stdin", given + "\r\n", []string{"device", "add", "sensor_003", "--secret-stdin", "--db", db}, 0, "", ""},
		{"duplicate add", "", []string{"device", "add", "sensor_001", "--db", db}, 1, "", "already exists"},
		{"bad id", "", []string{"device", "add", "bad/id", "--db", db}, 2, "", "bad device id"},
		{"id too long", "", []string{"device", "add", strings.Repeat("x", 65), "--db", db}, 2, "", "bad device id"},
		{"id dot dot", "", []string{"device", "add", "..", "--db", db}, 2, "", "bad device id"},
		{"id dot", "", []string{"device", "add", ".", "--db", db}, 2, "", "bad device id"},
		{"id leading dot", "", []string{"device", "add", ".hidden", "--db", db}, 2, "", "bad device id"},
		{"no id", "", []string{"device", "add", "--db", db}, 2, "", "exactly one device id"},
		{"two ids", "", []string{"device", "add", "a", "b", "--db", db}, 2, "", "exactly one device id"},
		{"short secret from stdin", "short\n", []string{"device", "add", "sensor_004", "--secret-stdin", "--db", db}, 2, "", "secret must be"},
		{"empty stdin", "", []string{"device", "add", "sensor_004", "--secret-stdin", "--db", db}, 2, "", "no secret"},
		{"secret with a space kept", given + " \n", []string{"device", "add", "sensor_004", "--secret-stdin", "--db", db}, 2, "", "secret must be"},
		{"unknown flag", "", []string{"device", "add", "sensor_004", "--secret", "x", "--db", db}, 2, "", "unknown flag"},
		{"list", "", []string{"device", "list", "--db", db}, 0, "sensor_001  enabled", ""},
		{"show", "", []string{"device", "show", "sensor_002", "--db", db}, 0, "state:   enabled", ""},
		{"disable", "", []string{"device", "disable", "sensor_002", "--db", db}, 0, "disabled device sensor_002", ""},
		{"show disabled", "", []string{"device", "show", "sensor_002", "--db", db}, 0, "state:   disabled", ""},
		{"show timestamp mode", "", []string{"device", "show", "sensor_002", "--db", db}, 0, "freshness: timestamp", ""},
		{"add counter mode", "", []string{"device", "add", "meter_001", "--freshness", "counter", "--db", db}, 0, "", ""},
		{"add bad mode", "", []string{"device", "add", "meter_002", "--freshness", "sometimes", "--db", db}, 2, "", "--freshness"},
		{"show counter mode", "", []string{"device", "show", "meter_001", "--db", db, "--outbox", filepath.Join(filepath.Dir(db), "none.db")}, 0, "freshness: counter (highest accepted: 0", ""},
		{"set-freshness bad mode", "", []string{"device", "set-freshness", "sensor_001", "sometimes", "--db", db}, 2, "", "timestamp or counter"},
		{"set-freshness no mode", "", []string{"device", "set-freshness", "sensor_001", "--db", db}, 2, "", "a device id and a mode"},
		{"set-freshness unknown device", "", []string{"device", "set-freshness", "ghost", "counter", "--db", db}, 1, "", "not found"},
		{"reset-counter of a timestamp-mode device", "", []string{"device", "reset-counter", "sensor_001", "--db", db}, 1, "", "no counter to reset"},
		{"set-freshness counter", "", []string{"device", "set-freshness", "sensor_003", "counter", "--db", db, "--outbox", filepath.Join(filepath.Dir(db), "none.db")}, 0, "now uses counter freshness", ""},
		{"list disabled", "", []string{"device", "list", "--db", db}, 0, "sensor_002  disabled", ""},
		{"enable", "", []string{"device", "enable", "sensor_002", "--db", db}, 0, "enabled device sensor_002", ""},
		{"remove", "", []string{"device", "remove", "sensor_003", "--db", db}, 0, "removed device sensor_003", ""},
		{"show removed", "", []string{"device", "show", "sensor_003", "--db", db}, 1, "", "device not found"},
		{"remove again", "", []string{"device", "remove", "sensor_003", "--db", db}, 1, "", "device not found"},
		{"disable unknown", "", []string{"device", "disable", "ghost", "--db", db}, 1, "", "device not found"},
		{"show bad id", "", []string{"device", "show", "a b", "--db", db}, 2, "", "bad device id"},
		{"list with arguments", "", []string{"device", "list", "extra", "--db", db}, 2, "", "unexpected argument"},
		{"add in a missing directory", "", []string{"device", "add", "sensor_001", "--db", filepath.Join(t.TempDir(), "no", "dir", "r.db")}, 1, "", "does not exist"},
	}
	var generated string
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			r := runCLI(t, s.stdin, s.args...)
			if r.code != s.code {
				t.Fatalf("exit %d (%v), want %d\nstdout: %s", r.code, r.err, s.code, r.stdout)
			}
			if !strings.Contains(r.stdout, s.stdout) {
				t.Errorf("stdout %q does not contain %q", r.stdout, s.stdout)
			}
			if s.errText != "" && (r.err == nil || !strings.Contains(r.err.Error(), s.errText) || strings.Contains(r.err.Error(), "\n")) {
				t.Errorf("error %v, want one line containing %q", r.err, s.errText)
			}
			for _, secret := range []string{given, generated} {
				if secret != "" && !strings.HasPrefix(s.name, "add generates") && (strings.Contains(r.stdout, secret) || strings.Contains(r.stderr, secret)) {
					t.Fatalf("the secret was printed: %q %q", r.stdout, r.stderr)
				}
			}
			if s.name == "add generates a secret" {
				if !hex64.MatchString(r.stdout) || !strings.Contains(r.stderr, "will not be shown again") {
					t.Fatalf("stdout %q, stderr %q; want the secret alone on stdout and a warning", r.stdout, r.stderr)
				}
				generated = strings.TrimSpace(r.stdout)
			}
		})
	}

	// The secrets were stored exactly: as printed, and as given minus the line end.
	reg, err := registry.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	cache, err := registry.NewCache(context.Background(), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	for id, want := range map[string]string{"sensor_001": generated, "sensor_002": given} {
		d, err := cache.Device(context.Background(), id)
		if err != nil || string(d.Secret) != want {
			t.Errorf("%s: stored secret %q, %v; want %q", id, d.Secret, err, want)
		}
	}
}

func TestRegistryPath(t *testing.T) {
	tests := []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"default", "", nil, defaultRegistryPath},
		{"environment", "/env/registry.db", nil, "/env/registry.db"},
		{"flag wins", "/env/registry.db", []string{"--db", "/flag/registry.db"}, "/flag/registry.db"},
		{"flag without environment", "", []string{"--db=/flag/registry.db"}, "/flag/registry.db"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("IOTGW_REGISTRY_PATH", tc.env)
			var got string
			dev := newDeviceCmd()
			dev.AddCommand(&cobra.Command{Use: "probe", RunE: func(cmd *cobra.Command, _ []string) error {
				got = registryPath(cmd)
				return nil
			}})
			dev.SetArgs(append([]string{"probe"}, tc.args...))
			if err := dev.Execute(); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("registryPath = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDeviceUsesEnvironmentRegistry(t *testing.T) {
	db := filepath.Join(t.TempDir(), "env.db")
	t.Setenv("IOTGW_REGISTRY_PATH", db)
	if r := runCLI(t, "", "device", "add", "sensor_001"); r.code != 0 {
		t.Fatalf("add: %v", r.err)
	}
	if r := runCLI(t, "", "device", "show", "sensor_001", "--db", db); r.code != 0 {
		t.Fatalf("show via --db: %v", r.err)
	}
}

// TestDeviceAddIssueCert: one command registers a device and issues its
// certificate; a failure to issue leaves no registration behind.
func TestDeviceAddIssueCert(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "registry.db")
	certs := filepath.Join(dir, "certs")

	r := runCLI(t, "", "device", "add", "sensor_001", "--issue-cert", "--certs", certs, "--db", db)
	if r.code != 1 || !strings.Contains(r.err.Error(), "no CA in") {
		t.Fatalf("without a CA: code %d, err %v; want 1 and \"no CA in\"", r.code, r.err)
	}
	if r := runCLI(t, "", "pki", "init", "--dir", certs); r.code != 0 {
		t.Fatalf("pki init: %v", r.err)
	}
	r = runCLI(t, "", "device", "add", "sensor_001", "--issue-cert", "--certs", certs, "--db", db)
	if r.code != 0 || !hex64.MatchString(r.stdout) {
		t.Fatalf("add --issue-cert: code %d, err %v, stdout %q", r.code, r.err, r.stdout)
	}
	crt, key := pki.DeviceCert(certs, "sensor_001")
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatalf("issued pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil || leaf.Subject.CommonName != "sensor_001" {
		t.Fatalf("issued certificate CN = %q (%v), want sensor_001", leaf.Subject.CommonName, err)
	}
	if r := runCLI(t, "", "device", "show", "sensor_001", "--db", db); r.code != 0 {
		t.Fatalf("show after add --issue-cert: %v", r.err)
	}

	// A certificate already on disk: refused before anything is registered.
	r = runCLI(t, "", "device", "add", "sensor_002", "--issue-cert", "--certs", certs, "--db", db)
	if r.code != 0 {
		t.Fatalf("add sensor_002: %v", r.err)
	}
	r = runCLI(t, "", "device", "add", "sensor_002", "--issue-cert", "--certs", certs, "--db", filepath.Join(dir, "other.db"))
	if r.code != 1 || !strings.Contains(r.err.Error(), "already exists") {
		t.Fatalf("existing cert: code %d, err %v", r.code, r.err)
	}
	if r := runCLI(t, "", "device", "show", "sensor_002", "--db", filepath.Join(dir, "other.db")); r.code == 0 {
		t.Fatalf("device registered although its certificate was refused")
	}

	for _, tc := range []struct {
		name    string
		args    []string
		errText string
	}{
		{"reserved id", []string{"device", "add", "gateway", "--db", db}, "reserved"},
		{"--certs without --issue-cert", []string{"device", "add", "sensor_003", "--certs", certs, "--db", db}, "needs --issue-cert"},
	} {
		r := runCLI(t, "", tc.args...)
		if r.code != 2 || r.err == nil || !strings.Contains(r.err.Error(), tc.errText) {
			t.Errorf("%s: code %d, err %v; want 2 and %q", tc.name, r.code, r.err, tc.errText)
		}
	}
}

// TestDeviceSummaryNamesEverySubcommand: `iotgw --help` shows device's
// summary line; it named every subcommand but revoke.
func TestDeviceSummaryNamesEverySubcommand(t *testing.T) {
	cmd := newDeviceCmd()
	for _, sub := range cmd.Commands() {
		if !strings.Contains(cmd.Short, sub.Name()) {
			t.Errorf("device's summary %q leaves out %q", cmd.Short, sub.Name())
		}
	}
}
