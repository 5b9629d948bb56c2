package mqttio

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/internal/secretfile"
	"github.com/iotgw/iotgw/pkg/pki"
)

func testConfig(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	files := pki.Paths(dir)
	c := DefaultConfig()
	c.Broker = "ssl://127.0.0.1:8884"
	c.CAFile, c.CertFile, c.KeyFile = files.CACert, files.GatewayCert, files.GatewayKey
	return c
}

// TestClientIDCannotBeADeviceID: the gateway's client ids never equal a
// device id, since the device listener gives each device its id as
// client id.
func TestClientIDCannotBeADeviceID(t *testing.T) {
	c := testConfig(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, id := range []string{c.ClientID, c.ClientID + ReplyClientSuffix} {
		if envelope.ValidDeviceID(id) {
			t.Errorf("default client id %q is a valid device id", id)
		}
	}
	tests := []struct {
		id   string
		want string
	}{
		{"iotgw-gateway", `must contain ":"`},
		{"gateway", `must contain ":"`},
		{"sensor_001", `must contain ":"`},
		{"", "non-empty"},
		{"iotgw:a/b", "no spaces"},
		{"iotgw:gw-2", ""},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			c := c
			c.ClientID = tc.id
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Validate = %v, want one line containing %q", err, tc.want)
			}
		})
	}
}

// TestKeyFileIsASecretFile: a gateway key that other users can read is
// refused with one line naming the key and the fix.
func TestKeyFileIsASecretFile(t *testing.T) {
	c := testConfig(t)
	if err := os.Chmod(c.KeyFile, 0o640); err != nil {
		t.Fatal(err)
	}
	err := c.Validate()
	if !errors.Is(err, secretfile.ErrTooOpen) {
		t.Fatalf("Validate with a 0640 key = %v, want ErrTooOpen", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "mqtt.key_file: ") || !strings.Contains(msg, "chmod 600") || strings.Contains(msg, "PRIVATE KEY") {
		t.Errorf("error %q: want one line naming mqtt.key_file and the fix, never the key", msg)
	}
	if err := os.Chmod(c.KeyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate with a 0600 key: %v", err)
	}
	c.KeyFile = filepath.Join(t.TempDir(), "missing.key")
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "mqtt.key_file: ") {
		t.Errorf("missing key: %v", err)
	}
}

// TestGatewayIdentityMatchesPKI: the CN checked at start is the one
// iotgw pki init puts in gateway.crt and the ACL grants.
func TestGatewayIdentityMatchesPKI(t *testing.T) {
	if GatewayIdentity != pki.GatewayIdentity {
		t.Fatalf("mqttio.GatewayIdentity %q != pki.GatewayIdentity %q", GatewayIdentity, pki.GatewayIdentity)
	}
}

// TestDeviceCertificateRefused: a device's certificate (another CN) as
// mqtt.cert_file fails Validate with one line naming the key and both CNs.
func TestDeviceCertificateRefused(t *testing.T) {
	c := testConfig(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("gateway certificate: %v", err)
	}
	dir := filepath.Dir(c.CertFile)
	if err := pki.Issue(dir, "sensor-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	c.CertFile, c.KeyFile = pki.DeviceCert(dir, "sensor-1")
	err := c.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "mqtt.cert_file: ") || !strings.Contains(err.Error(), `CN "sensor-1"`) ||
		!strings.Contains(err.Error(), `"gateway"`) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("device certificate: %v", err)
	}
}

// TestShareGroupValidated: mqtt.share_group becomes one level of the
// subscription's topic filter ($share/<group>/<topic>), so anything that
// would change the filter is refused, with one line that names the key
// and never quotes the value (the group name is a secret).
func TestShareGroupValidated(t *testing.T) {
	c := testConfig(t)
	tests := []struct {
		name, group, want string
	}{
		{"unset", "", ""},
		{"plain", "iotgw-gateways-7f3a9c", ""},
		{"too short to be a secret", "iotgw-gateways", "at least 16"},
		{"64 bytes", strings.Repeat("g", MaxShareGroupBytes), ""},
		{"utf-8", "grüppe-der-gateways", ""},
		{"65 bytes", strings.Repeat("g", MaxShareGroupBytes+1), "at most 64"},
		{"slash", "aaaaaaaaaaaaaaaa/b", "must not contain"},
		{"plus", "aaaaaaaaaaaaaaaa+", "must not contain"},
		{"hash", "aaaaaaaaaaaaaaaa#", "must not contain"},
		{"NUL", "aaaaaaaaaaaaaaaa\x00b", "NUL"},
		{"space", "aaaaaaaaaaaaaaaa b", "white space"},
		{"newline", "aaaaaaaaaaaaaaaa\nb", "white space"},
		{"only spaces", "                ", "white space"},
		{"control", "aaaaaaaaaaaaaaaa\x7fb", "control"},
		{"invalid utf-8", "aaaaaaaaaaaaaaaa\xffb", "UTF-8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := c
			c.ShareGroup = tc.group
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted %q", tc.group)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "mqtt.share_group: ") || !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Fatalf("Validate = %q, want one line naming mqtt.share_group and containing %q", msg, tc.want)
			}
			if len(tc.group) > 1 && strings.Contains(msg, tc.group) {
				t.Fatalf("Validate = %q quotes the group name", msg)
			}
		})
	}
}
