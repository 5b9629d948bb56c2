package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/test/harness"
)

// pythonWithPaho returns a Python 3 that can import paho.mqtt.client:
// python3 on PATH, else Debian's /usr/bin/python3 (a pyenv or venv python3
// first on PATH does not see python3-paho-mqtt). Without one the test is
// skipped, loudly, and fails when CI=true.
func pythonWithPaho(t *testing.T) string {
	t.Helper()
	var tried []string
	for _, name := range []string{"python3", "/usr/bin/python3"} {
		py, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		tried = append(tried, py)
		if exec.Command(py, "-c", "import paho.mqtt.client").Run() == nil {
			return py
		}
	}
	msg := "python3 with paho-mqtt not found (tried " + strings.Join(tried, ", ") + "): apt-get install python3-paho-mqtt, or run scripts/install-deps.sh"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED, NOT TESTED: " + msg)
	return ""
}

// pyDevice runs examples/python-device/device.py as id with the secret in
// a 0600 file, and extra flags, and returns its exit code, stdout and
// stderr.
func (f *fixture) pyDevice(t *testing.T, py, id, secret, payload string, timeout time.Duration, extra ...string) (int, string, string) {
	t.Helper()
	secretFile := filepath.Join(f.dir, id+".secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	crt, key := pki.DeviceCert(f.certs, id)
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	args := append([]string{filepath.Join(harness.RepoRoot(t), "examples", "python-device", "device.py"),
		"--host", "127.0.0.1", "--port", strconv.Itoa(f.broker.Port),
		"--ca", pki.Paths(f.certs).CACert, "--cert", crt, "--key", key,
		"--device", id, "--secret-file", secretFile,
		"--payload", payload, "--timeout", strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64)}, extra...)
	cmd := exec.CommandContext(ctx, py, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run device.py: %v\n%s", err, stderr.String())
		}
		code = ee.ExitCode()
	}
	return code, stdout.String(), stderr.String()
}

// TestPythonDevice runs the Python example device against a live gateway
// (real Mosquitto with the project's config, real `iotgw serve`): its
// message reaches the backend with its exact payload bytes, and it prints
// the reply it verified with K_down. A wrong secret (the gateway's notice
// answers the message but does not verify) exits 3, a disabled device (a
// signed notice) and an unregistered one (no notice) exit 1, each with
// one line.
func TestPythonDevice(t *testing.T) {
	py := pythonWithPaho(t)
	f := newFixture(t, "py_sensor", "py_off")
	harness.IssueDevice(t, f.certs, "py_ghost") // a certificate, no registry entry
	r, err := registry.Open(context.Background(), f.db)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetEnabled(context.Background(), "py_off", false); err != nil {
		t.Fatal(err)
	}
	r.Close()
	f.startGateway(gatewayOpts{})

	payload := `{"temperature": 21.5, "unit":"C"}` // the space must reach the backend as sent
	code, stdout, stderr := f.pyDevice(t, py, "py_sensor", f.secrets["py_sensor"], payload, 15*time.Second)
	if code != 0 {
		t.Fatalf("device.py exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	var out struct {
		MessageID string `json:"message_id"`
		Reply     struct {
			InReplyTo string          `json:"in_reply_to"`
			Status    int             `json:"status"`
			Body      json.RawMessage `json:"body"`
		} `json:"reply"`
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("device.py printed %q: %v", stdout, err)
	}
	if out.Reply.InReplyTo != out.MessageID || out.Reply.Status != 200 || string(out.Reply.Body) != `{"ok":true}` {
		t.Fatalf("device.py printed %s, want the verified reply to its message with status 200 and body {\"ok\":true}", stdout)
	}
	reqs := f.backend.waitCount(t, 1, 10*time.Second)
	if got := reqs[0]; got.Header.Get("X-Message-ID") != out.MessageID || got.Header.Get("X-Device-ID") != "py_sensor" ||
		!bytes.Equal(got.Body, []byte(payload)) {
		t.Fatalf("backend got %s %q for %s, want py_sensor's exact payload %q for %s",
			got.Header.Get("X-Device-ID"), got.Body, got.Header.Get("X-Message-ID"), payload, out.MessageID)
	}

	for _, tc := range []struct {
		name, id, secret, want string
		code                   int
		timeout                time.Duration
	}{
		// The gateway's bad_signature notice is signed with the registered
		// secret: it answers the message but does not verify (exit 3).
		{"wrong secret", "py_sensor", strings.Repeat("0", 64), "answer not verified: the answer to ", 3, 15 * time.Second},
		{"disabled", "py_off", f.secrets["py_off"], "rejected: disabled", 1, 15 * time.Second},
		{"unregistered", "py_ghost", strings.Repeat("1", 64), "timeout: no reply to ", 1, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := f.pyDevice(t, py, tc.id, tc.secret, `{"x":1}`, tc.timeout)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if code != tc.code || stdout != "" || len(lines) != 1 || !strings.HasPrefix(lines[0], tc.want) {
				t.Fatalf("device.py exit %d, stdout %q, stderr %q; want exit %d and one line %q", code, stdout, stderr, tc.code, tc.want)
			}
		})
	}
	if n := len(f.backend.requests()); n != 1 {
		t.Errorf("backend got %d requests, want only the genuine one", n)
	}
}
