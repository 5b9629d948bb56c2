package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/test/harness"
)

// opensslDeviceKey makes a key and a CSR for id with openssl, as a device
// would, in a directory of its own (the PKI never sees the key).
func opensslDeviceKey(t *testing.T, id string, keyArgs ...string) (csr, key string) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("SKIPPED, NOT TESTED: openssl not installed")
	}
	dir := t.TempDir()
	csr, key = filepath.Join(dir, id+".csr"), filepath.Join(dir, id+".key")
	args := append([]string{"req", "-new", "-nodes", "-keyout", key, "-subj", "/CN=" + id, "-out", csr}, keyArgs...)
	if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl %v: %v\n%s", args, err, out)
	}
	return csr, key
}

// placeDeviceKey copies the device's own key next to its signed
// certificate, where the harness's device clients look for it.
func placeDeviceKey(t *testing.T, certs, id, key string) {
	t.Helper()
	b, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	_, dst := pki.DeviceCert(certs, id)
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCSRDeviceOnTheWire provisions devices from CSRs made by openssl
// (ECDSA P-256 with "iotgw device add --csr", RSA 2048 with "iotgw pki
// sign") and by the Python example (examples/python-device/make_csr.py,
// then device.py with that key): real Mosquitto accepts their certificates, binds them to their
// CN, and the gateway answers their signed messages. A CSR naming another
// device is refused.
func TestCSRDeviceOnTheWire(t *testing.T) {
	f := newFixture(t, "plain")
	f.startGateway(gatewayOpts{})

	ecCSR, ecKey := opensslDeviceKey(t, "csr_ec", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
	out, err := runCLI(f.bin, "", "device", "add", "csr_ec", "--csr", ecCSR, "--certs", f.certs, "--db", f.db)
	if err != nil {
		t.Fatalf("device add --csr: %v\n%s", err, out)
	}
	f.secrets["csr_ec"] = lastLine(out)

	rsaCSR, rsaKey := opensslDeviceKey(t, "csr_rsa", "-newkey", "rsa:2048")
	out, err = runCLI(f.bin, "", "device", "add", "csr_rsa", "--db", f.db)
	if err != nil {
		t.Fatalf("device add: %v\n%s", err, out)
	}
	f.secrets["csr_rsa"] = lastLine(out)
	if out, err := runCLI(f.bin, "", "pki", "sign", "csr_rsa", "--csr", rsaCSR, "--dir", f.certs, "--db", f.db, "--days", "30"); err != nil {
		t.Fatalf("pki sign: %v\n%s", err, out)
	}

	// A CSR for csr_ec's name signed as another device is refused, and
	// no certificate appears.
	otherCSR, _ := opensslDeviceKey(t, "csr_ec", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
	if out, err := runCLI(f.bin, "", "pki", "sign", "csr_evil", "--csr", otherCSR, "--dir", f.certs, "--db", f.db); err == nil || !strings.Contains(out, "Common Name") {
		t.Fatalf("CSR for another CN: %v\n%s", err, out)
	}
	if crt, _ := pki.DeviceCert(f.certs, "csr_evil"); fileExists(crt) {
		t.Fatal("certificate written for a refused CSR")
	}

	// The Python example device makes its key with the cryptography
	// package, and then talks to the gateway with it.
	py := pythonWithPaho(t)
	if out, err := exec.Command(py, "-c", "import cryptography").CombinedOutput(); err != nil {
		t.Fatalf("python3 without cryptography (apt-get install python3-cryptography): %v\n%s", err, out)
	}
	pyDir := t.TempDir()
	pyKey, pyCSR := filepath.Join(pyDir, "csr_py.key"), filepath.Join(pyDir, "csr_py.csr")
	if out, err := exec.Command(py, filepath.Join(harness.RepoRoot(t), "examples", "python-device", "make_csr.py"),
		"--device", "csr_py", "--key-out", pyKey, "--csr-out", pyCSR).CombinedOutput(); err != nil {
		t.Fatalf("make_csr.py: %v\n%s", err, out)
	}
	out, err = runCLI(f.bin, "", "device", "add", "csr_py", "--csr", pyCSR, "--certs", f.certs, "--db", f.db)
	if err != nil {
		t.Fatalf("device add --csr (python CSR): %v\n%s", err, out)
	}
	placeDeviceKey(t, f.certs, "csr_py", pyKey)
	if code, stdout, stderr := f.pyDevice(t, py, "csr_py", lastLine(out), `{"t":0}`, 15*time.Second); code != 0 || !strings.Contains(stdout, `"status":200`) {
		t.Fatalf("python device with its own key: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}

	placeDeviceKey(t, f.certs, "csr_ec", ecKey)
	placeDeviceKey(t, f.certs, "csr_rsa", rsaKey)
	for _, id := range []string{"csr_ec", "csr_rsa"} {
		t.Run(id, func(t *testing.T) {
			d := f.device(id)
			raw, msgID := d.signed(`{"t":1}`, time.Now().Unix())
			d.publish("", raw)
			r, ok := d.nextReply(10 * time.Second)
			if !ok || !r.valid || replyPayload(t, r)["in_reply_to"] != msgID {
				t.Fatalf("reply ok=%v valid=%v %s, want a verified reply to %s", ok, r.valid, r.raw, msgID)
			}
			// Bound to its CN: publishing as another device is not delivered.
			before := len(f.backend.requests())
			other, _ := signAs("plain", f.secrets["plain"], `{"t":2}`, time.Now().Unix())
			d.publish("device/plain/data", other)
			raw, msgID = d.signed(`{"t":3}`, time.Now().Unix())
			d.publish("", raw)
			if r, ok := d.nextReply(10 * time.Second); !ok || replyPayload(t, r)["in_reply_to"] != msgID {
				t.Fatalf("no reply to the message after the foreign publish")
			}
			if got := f.backend.requests()[before:]; len(got) != 1 || got[0].Header.Get("X-Device-ID") != id {
				t.Fatalf("backend got %d requests after the foreign publish, want only %s's own", len(got), id)
			}
		})
	}

}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
