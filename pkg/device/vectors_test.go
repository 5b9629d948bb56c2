package device

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// TestReplyVectors runs every reply vector of testdata/vectors.json (the
// vectors the Python and C devices check too) through the SDK's downlink
// handling: each verifies with its secret's downlink key, and the same
// bytes with one signature character changed, or checked with the uplink
// key, do not.
func TestReplyVectors(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Replies []struct {
			Name, Secret, Message string
			DownlinkKey           string `json:"downlink_key"`
		} `json:"replies"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Replies) == 0 {
		t.Fatal("no reply vectors")
	}
	for _, v := range file.Replies {
		t.Run(v.Name, func(t *testing.T) {
			if got := string(envelope.DownlinkKey([]byte(v.Secret))); got != v.DownlinkKey {
				t.Fatalf("downlink key %s, vector says %s", got, v.DownlinkKey)
			}
			e, err := envelope.Parse([]byte(v.Message), envelope.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseDownlink(e.DeviceID, envelope.NewDownlinkMAC([]byte(v.Secret)), []byte(v.Message), time.Time{})
			if err != nil {
				t.Fatalf("vector does not verify: %v", err)
			}
			if r.Status == 0 && r.Reason == "" {
				t.Fatalf("neither status nor reason: %+v", r)
			}
			i := strings.LastIndex(v.Message, `"signature":"`) + len(`"signature":"`)
			flip := byte('0')
			if v.Message[i] == '0' {
				flip = '1'
			}
			bad := v.Message[:i] + string(flip) + v.Message[i+1:]
			if _, err := parseDownlink(e.DeviceID, envelope.NewDownlinkMAC([]byte(v.Secret)), []byte(bad), time.Time{}); !errors.Is(err, ErrBadReplySignature) {
				t.Errorf("one signature character changed: err = %v", err)
			}
			if _, err := parseDownlink(e.DeviceID, envelope.NewMAC([]byte(v.Secret)), []byte(v.Message), time.Time{}); !errors.Is(err, ErrBadReplySignature) {
				t.Errorf("checked with the uplink key: err = %v", err)
			}
		})
	}
}
