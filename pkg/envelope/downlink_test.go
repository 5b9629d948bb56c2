package envelope_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// TestDownlinkKeyOpenSSL recomputes K_down with openssl, from the spec's
// words: HMAC-SHA256 keyed with the secret's bytes over "iotgw/v1/downlink".
func TestDownlinkKeyOpenSSL(t *testing.T) {
	ossl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl not found; scripts/install-deps.sh installs it")
	}
	for _, s := range []string{secret, "pässwörd-für-sensor_001-✓"} {
		cmd := exec.Command(ossl, "dgst", "-sha256", "-hmac", s)
		cmd.Stdin = strings.NewReader("iotgw/v1/downlink")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl: %v", err)
		}
		fields := strings.Fields(string(out))
		got := string(envelope.DownlinkKey([]byte(s)))
		if len(fields) == 0 || fields[len(fields)-1] != got {
			t.Fatalf("openssl says %q, DownlinkKey says %s", out, got)
		}
	}
}

// TestDownlinkSignature checks that a downlink is signed like an uplink with
// the hex of K_down as the secret, and that the two never cross-verify.
func TestDownlinkSignature(t *testing.T) {
	e := envelope.New([]byte(secret), "sensor_001", 1727712000, uplinkID, []byte(`{"in_reply_to":null,"error":"malformed"}`))
	down := envelope.SignDownlink([]byte(secret), &e)
	if want := envelope.Sign(envelope.DownlinkKey([]byte(secret)), &e); down != want {
		t.Fatal("SignDownlink differs from Sign with the hex downlink key")
	}
	if down == e.Signature {
		t.Fatal("downlink and uplink signatures are equal")
	}
	if !envelope.Verify(envelope.NewMAC([]byte(secret)), &e) || envelope.Verify(envelope.NewDownlinkMAC([]byte(secret)), &e) {
		t.Fatal("an uplink signature verifies as a downlink")
	}
	e.Signature = down
	if !envelope.Verify(envelope.NewDownlinkMAC([]byte(secret)), &e) || envelope.Verify(envelope.NewMAC([]byte(secret)), &e) {
		t.Fatal("a downlink signature verifies as an uplink")
	}
	if k := envelope.DownlinkKey([]byte(secret)); len(k) != 64 || strings.ToLower(string(k)) != string(k) {
		t.Fatalf("DownlinkKey = %q, want 64 lowercase hex characters", k)
	}
}
