package harness_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/test/harness"
)

func TestMosquittoConfig(t *testing.T) {
	project, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "mosquitto", "mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	good := "listener 8883\nlistener 8884 127.0.0.1\ncafile /etc/iotgw/certs/ca.crt\nacl_file /etc/iotgw/mosquitto/acl\npersistence_location /var/lib/iotgw/mosquitto/\n"
	tests := []struct {
		name     string
		conf     string
		certsDir string
		wantErr  string
		want     []string
	}{
		{name: "project file", conf: string(project), certsDir: "/c",
			want: []string{"\nlistener 4321 127.0.0.1\n", "\nlistener 4322 127.0.0.1\n", "crlfile /c/crl.pem\n", "cafile /c/ca.crt\n", "certfile /c/broker.crt\n", "keyfile /c/broker.key\n", "acl_file /a/acl\n", "persistence true\n", "persistence_location /d/\n"}},
		{name: "trailing slash", conf: good, certsDir: "/c/", want: []string{"cafile /c/ca.crt\n"}},
		{name: "no gateway listener", conf: "listener 8883\ncafile /etc/iotgw/certs/ca.crt\nacl_file /etc/iotgw/mosquitto/acl\npersistence_location /var/lib/iotgw/mosquitto/\n", certsDir: "/c", wantErr: "listener 8884 127.0.0.1"},
		{name: "gateway listener on every interface", conf: strings.Replace(good, "listener 8884 127.0.0.1", "listener 8884", 1), certsDir: "/c", wantErr: "listener 8884 127.0.0.1"},
		{name: "no listener", conf: "listener 8884 127.0.0.1\ncafile /etc/iotgw/certs/ca.crt\nacl_file /etc/iotgw/mosquitto/acl\npersistence_location /var/lib/iotgw/mosquitto/\n", certsDir: "/c", wantErr: "listener 8883"},
		{name: "two listeners", conf: good + "listener 8883\n", certsDir: "/c", wantErr: "found 2"},
		{name: "no certs", conf: "listener 8883\nlistener 8884 127.0.0.1\nacl_file /etc/iotgw/mosquitto/acl\npersistence_location /var/lib/iotgw/mosquitto/\n", certsDir: "/c", wantErr: "/etc/iotgw/certs/"},
		{name: "no acl", conf: "listener 8883\nlistener 8884 127.0.0.1\ncafile /etc/iotgw/certs/ca.crt\npersistence_location /var/lib/iotgw/mosquitto/\n", certsDir: "/c", wantErr: "/etc/iotgw/mosquitto/acl"},
		{name: "no data dir", conf: "listener 8883\nlistener 8884 127.0.0.1\ncafile /etc/iotgw/certs/ca.crt\nacl_file /etc/iotgw/mosquitto/acl\n", certsDir: "/c", wantErr: "/var/lib/iotgw/mosquitto/"},
		{name: "unknown data path", conf: good + "persistence_file /var/lib/iotgw/other.db\n", certsDir: "/c", wantErr: "unhandled path"},
		{name: "unknown path", conf: good + "persistence_location /etc/iotgw/db/\n", certsDir: "/c", wantErr: "unhandled path"},
		{name: "space in path", conf: good, certsDir: "/my certs", wantErr: "white space"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := harness.MosquittoConfig([]byte(tc.conf), tc.certsDir, "/a/acl", "/d", 4321, 4322)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(got), w) {
					t.Errorf("config lacks %q:\n%s", w, got)
				}
			}
			for _, line := range strings.Split(string(got), "\n") {
				if !strings.HasPrefix(line, "#") && (strings.Contains(line, "8883") || strings.Contains(line, "8884")) {
					t.Errorf("config still uses 8883 or 8884: %q", line)
				}
			}
		})
	}
}

// TestProjectListeners reads the shipped mosquitto.conf: the device
// listener forces client ids to the CN and checks the CRL, the gateway
// listener is bound to loopback, and no listener option precedes the
// first listener (that would open a plaintext listener on 1883).
func TestProjectListeners(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "mosquitto", "mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "listener ") {
			cur = line
		}
		sections[cur] = append(sections[cur], line)
	}
	want := map[string][]string{
		"listener 8883":           {"require_certificate true", "use_identity_as_username true", "use_username_as_clientid true", "crlfile /etc/iotgw/certs/crl.pem"},
		"listener 8884 127.0.0.1": {"require_certificate true", "use_identity_as_username true", "crlfile /etc/iotgw/certs/crl.pem"},
		"":                        {"per_listener_settings false", "allow_anonymous false", "acl_file /etc/iotgw/mosquitto/acl"},
	}
	for sec, lines := range want {
		for _, l := range lines {
			if !contains(sections[sec], l) {
				t.Errorf("section %q lacks %q", sec, l)
			}
		}
	}
	if contains(sections["listener 8884 127.0.0.1"], "use_username_as_clientid true") {
		t.Error("the gateway listener renames client ids: the gateway's two connections would kick each other")
	}
	for _, l := range sections[""] {
		for _, opt := range []string{"cafile", "certfile", "keyfile", "require_certificate", "use_identity_as_username", "use_username_as_clientid", "crlfile"} {
			if strings.HasPrefix(l, opt+" ") {
				t.Errorf("listener option %q before the first listener configures the default listener (plaintext 1883)", l)
			}
		}
	}
	if len(sections) != 3 {
		t.Errorf("mosquitto.conf has listeners %v, want exactly 8883 and 8884 on 127.0.0.1", keys(sections))
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func keys(m map[string][]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestPKIReadableByBroker(t *testing.T) {
	dir := harness.PKI(t)
	for p := dir; p != filepath.Dir(p); p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o005 != 0o005 && strings.HasPrefix(p, os.TempDir()) && p != filepath.Clean(os.TempDir()) {
			t.Errorf("%s is mode %v; the mosquitto user cannot read it", p, fi.Mode().Perm())
		}
	}
	harness.IssueDevice(t, dir, "d1")
	if _, err := os.Stat(filepath.Join(dir, "devices", "d1.crt")); err != nil {
		t.Error(err)
	}
}

// TestBroker checks that StartMosquitto, Stop and Restart work and that
// Restart keeps the port.
func TestBroker(t *testing.T) {
	dir := harness.PKI(t)
	harness.IssueDevice(t, dir, "d1")
	b := harness.StartMosquitto(t, dir)
	if want := "ssl://127.0.0.1:"; !strings.HasPrefix(b.Addr, want) {
		t.Errorf("Addr = %q, want prefix %q", b.Addr, want)
	}
	harness.NewDeviceClient(t, b, dir, "d1")

	b.Stop()
	if _, err := harness.Connect(t, b.Addr, harness.TLSConfig(t, dir, "d1"), "d1"); err == nil {
		t.Errorf("connected to a stopped broker")
	}
	b.Stop() // a second Stop does nothing
	port := b.Port
	b.Restart()
	if b.Port != port {
		t.Errorf("Restart moved the broker from port %d to %d", port, b.Port)
	}
	harness.NewDeviceClient(t, b, dir, "d1")
	b.Restart()
	harness.NewDeviceClient(t, b, dir, "d1")
	if b.GatewayPort == b.Port || !strings.HasSuffix(b.GatewayAddr, fmt.Sprintf(":%d", b.GatewayPort)) {
		t.Errorf("GatewayAddr %q, GatewayPort %d, Port %d: want a second listener", b.GatewayAddr, b.GatewayPort, b.Port)
	}
	if _, err := harness.Connect(t, b.GatewayAddr, harness.TLSConfig(t, dir, "gateway"), "iotgw:test"); err != nil {
		t.Errorf("gateway listener: %v", err)
	}
}

// TestBuildIotgwPKI builds the iotgw binary and runs "iotgw pki" with it.
func TestBuildIotgwPKI(t *testing.T) {
	bin := harness.BuildIotgw(t)
	if again := harness.BuildIotgw(t); again != bin {
		t.Errorf("second BuildIotgw = %q, want the same binary %q", again, bin)
	}
	dir := filepath.Join(t.TempDir(), "certs")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  []string
		wantErr  string
	}{
		{"init", []string{"pki", "init", "--dir", dir, "--host", "mqtt.example.com"}, 0,
			[]string{"wrote " + pki.Paths(dir).CAKey, "wrote " + pki.Paths(dir).GatewayCert}, ""},
		{"init again", []string{"pki", "init", "--dir", dir}, 1, nil, "already exists"},
		{"issue", []string{"pki", "issue", "dev-1", "--dir", dir}, 0,
			[]string{"wrote " + filepath.Join(dir, "devices", "dev-1.key"), "wrote " + filepath.Join(dir, "devices", "dev-1.crt")}, ""},
		{"issue again", []string{"pki", "issue", "dev-1", "--dir", dir}, 1, nil, "already exists"},
		{"bad id", []string{"pki", "issue", "dev/1", "--dir", dir}, 2, nil, "device id must be"},
		{"gateway id", []string{"pki", "issue", "gateway", "--dir", dir}, 2, nil, "reserved"},
		{"no id", []string{"pki", "issue", "--dir", dir}, 2, nil, "DEVICE_ID"},
		{"no CA", []string{"pki", "issue", "d1", "--dir", t.TempDir()}, 1, nil, "no CA"},
		{"bad host", []string{"pki", "init", "--dir", t.TempDir(), "--host", "a b"}, 2, nil, "host"},
		{"bad flag", []string{"pki", "init", "--nope"}, 2, nil, "unknown flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code = %d, want %d (stderr %q)", code, tc.wantCode, stderr.String())
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(string(out), w+"\n") {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			if tc.wantErr != "" {
				if !strings.Contains(stderr.String(), tc.wantErr) || strings.Count(stderr.String(), "\n") != 1 {
					t.Errorf("stderr = %q, want one line containing %q", stderr.String(), tc.wantErr)
				}
			}
		})
	}
}
