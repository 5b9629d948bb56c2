package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
)

// The Python and C device programs without a clock, against a live
// gateway (docs/PROTOCOL.md, sections 2a and 4c): counter mode with the
// counter persisted in a file, and the time asked from the gateway.

// sdkRun runs one device program once, as one device, with secret and
// extra flags, and returns its exit code, stdout and stderr.
type sdkRun func(t *testing.T, secret string, extra ...string) (int, string, string)

// sdkOutput is what a device program prints on success.
type sdkOutput struct {
	MessageID string `json:"message_id"`
	Counter   int64  `json:"counter"`
	Reply     struct {
		InReplyTo string `json:"in_reply_to"`
		Status    int    `json:"status"`
	} `json:"reply"`
}

// checkSDKCounter drives a counter-mode device program through a
// counter's life: the first boot starts at 1, a reboot continues at the
// stored block + 100, a timestamp from a counter device is malformed, a
// device that lost its counter file is refused as replay until the
// operator's reset-counter (with a new secret) lets it start at 1 again.
// The backend gets exactly the three accepted messages, with
// X-Device-Counter.
func checkSDKCounter(t *testing.T, f *fixture, id string, run sdkRun) {
	secret := f.secrets[id]
	ctrFile := filepath.Join(f.dir, id+".counter")
	stored := func() string {
		b, err := os.ReadFile(ctrFile)
		if err != nil {
			t.Fatalf("counter file: %v", err)
		}
		return strings.TrimSpace(string(b))
	}
	accepted := func(secret string, want int64) {
		t.Helper()
		code, stdout, stderr := run(t, secret, "--counter-file", ctrFile)
		var out sdkOutput
		if code != 0 || json.Unmarshal([]byte(stdout), &out) != nil {
			t.Fatalf("exit %d, stdout %q, stderr %q; want a verified reply", code, stdout, stderr)
		}
		if out.Counter != want || out.Reply.Status != 200 || out.Reply.InReplyTo != out.MessageID {
			t.Fatalf("printed %s; want counter %d and the verified 200 reply to its message", stdout, want)
		}
		if got := stored(); got != strconv.FormatInt(want, 10) {
			t.Fatalf("counter file holds %s after counter %d; want the block's first counter, %d, written before its use", got, want, want)
		}
	}
	refused := func(secret, want string, extra ...string) {
		t.Helper()
		code, stdout, stderr := run(t, secret, extra...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != 1 || stdout != "" || len(lines) != 1 || lines[0] != want {
			t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and %q", code, stdout, stderr, want)
		}
	}

	accepted(secret, 1)   // first boot: nothing stored
	accepted(secret, 101) // a reboot: the stored block (1) + 100, never a used value
	refused(secret, "rejected: malformed")

	// The counter file is lost: the device starts at 1 again, which the
	// gateway has accepted already.
	if err := os.Remove(ctrFile); err != nil {
		t.Fatal(err)
	}
	refused(secret, "rejected: replay", "--counter-file", ctrFile)

	// The operator resets the counter, which gives the device a new secret.
	newSecret, err := registry.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(f.bin, newSecret+"\n", "device", "reset-counter", id, "--secret-stdin", "--db", f.db, "--outbox", f.outbox()); err != nil {
		t.Fatalf("device reset-counter: %v\n%s", err, out)
	}
	if err := os.Remove(ctrFile); err != nil {
		t.Fatal(err)
	}
	accepted(newSecret, 1)

	reqs := f.backend.waitCount(t, 3, 10*time.Second)
	var got []string
	for _, r := range f.backend.requests() {
		if r.Header.Get("X-Device-ID") != id || r.Header.Get("X-Device-Timestamp") != "" {
			t.Errorf("backend got %s with X-Device-Timestamp %q; want %s in counter mode", r.Header.Get("X-Device-ID"), r.Header.Get("X-Device-Timestamp"), id)
		}
		got = append(got, r.Header.Get("X-Device-Counter"))
	}
	if len(reqs) != 3 || strings.Join(got, ",") != "1,101,1" {
		t.Fatalf("backend got counters %v; want exactly 1, 101, 1 (the refused ones never)", got)
	}
}

var clockSet = regexp.MustCompile(`(?m)^clock: set from the gateway \(\+(3599|3600|3601) s from the local clock\)$`)

// checkSDKTime runs a device program whose clock is an hour late: with
// --sync-time it asks the gateway for the time first (section 4c) and is
// accepted at once; without it, its message is refused as stale, and it
// asks for the time by itself and sends the reading again. The backend
// gets the two accepted messages, stamped with the gateway's time.
func checkSDKTime(t *testing.T, f *fixture, id string, run sdkRun) {
	secret := f.secrets[id]
	code, stdout, stderr := run(t, secret, "--sync-time", "--clock-offset", "-3600")
	var out sdkOutput
	if code != 0 || json.Unmarshal([]byte(stdout), &out) != nil || out.Reply.Status != 200 {
		t.Fatalf("--sync-time: exit %d, stdout %q, stderr %q; want a verified 200 reply", code, stdout, stderr)
	}
	if !clockSet.MatchString(stderr) || strings.Contains(stderr, "stale") {
		t.Fatalf("--sync-time: stderr %q; want the clock set from the gateway, an hour ahead of the local one, and no stale", stderr)
	}

	code, stdout, stderr = run(t, secret, "--clock-offset", "-3600")
	if code != 0 || json.Unmarshal([]byte(stdout), &out) != nil || out.Reply.Status != 200 {
		t.Fatalf("after stale: exit %d, stdout %q, stderr %q; want a verified 200 reply", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "stale: asking the gateway for the time") || !clockSet.MatchString(stderr) {
		t.Fatalf("after stale: stderr %q; want the stale notice, then the clock set from the gateway", stderr)
	}

	reqs := f.backend.waitCount(t, 2, 10*time.Second)
	now := time.Now().Unix()
	for _, r := range f.backend.requests() {
		ts, err := strconv.ParseInt(r.Header.Get("X-Device-Timestamp"), 10, 64)
		if err != nil || ts < now-300 || ts > now+300 {
			t.Errorf("backend got X-Device-Timestamp %q; want the gateway's time, not the device's clock an hour late", r.Header.Get("X-Device-Timestamp"))
		}
	}
	if len(reqs) != 2 || len(f.backend.requests()) != 2 {
		t.Fatalf("backend got %d requests; want the two accepted ones (the stale one never)", len(f.backend.requests()))
	}
}

// TestPythonDeviceCounter runs examples/python-device in counter mode
// (--counter-file) against a live gateway: checkSDKCounter.
func TestPythonDeviceCounter(t *testing.T) {
	py := pythonWithPaho(t)
	f := newFixture(t)
	f.addCounterDevice("py_meter")
	f.startGateway(gatewayOpts{})
	checkSDKCounter(t, f, "py_meter", func(t *testing.T, secret string, extra ...string) (int, string, string) {
		return f.pyDevice(t, py, "py_meter", secret, `{"kwh":1.5}`, 15*time.Second, extra...)
	})
}

// TestPythonDeviceTime runs examples/python-device with a clock an hour
// late against a live gateway: checkSDKTime.
func TestPythonDeviceTime(t *testing.T) {
	py := pythonWithPaho(t)
	f := newFixture(t, "py_noclock")
	f.startGateway(gatewayOpts{})
	checkSDKTime(t, f, "py_noclock", func(t *testing.T, secret string, extra ...string) (int, string, string) {
		return f.pyDevice(t, py, "py_noclock", secret, `{"t":1}`, 15*time.Second, extra...)
	})
}

// TestCDeviceCounter runs the C device program in counter mode
// (--counter-file, iotgw_counter) against a live gateway: checkSDKCounter.
func TestCDeviceCounter(t *testing.T) {
	bin := buildCDevice(t)
	f := newFixture(t)
	f.addCounterDevice("c_meter")
	f.startGateway(gatewayOpts{})
	crt, key := pki.DeviceCert(f.certs, "c_meter")
	checkSDKCounter(t, f, "c_meter", func(t *testing.T, secret string, extra ...string) (int, string, string) {
		return f.cDevice(t, bin, "c_meter", crt, key, secret, `{"kwh":1.5}`, 15*time.Second, extra...)
	})
}

// TestCDeviceTime runs the C device program with a clock an hour late
// against a live gateway: checkSDKTime.
func TestCDeviceTime(t *testing.T) {
	bin := buildCDevice(t)
	f := newFixture(t, "c_noclock")
	f.startGateway(gatewayOpts{})
	crt, key := pki.DeviceCert(f.certs, "c_noclock")
	checkSDKTime(t, f, "c_noclock", func(t *testing.T, secret string, extra ...string) (int, string, string) {
		return f.cDevice(t, bin, "c_noclock", crt, key, secret, `{"t":1}`, 15*time.Second, extra...)
	})
}
