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

// TestTimeReplyVectors runs every time reply vector of
// testdata/vectors.json through the SDK: a device that sent the vector's
// nonce, with the vector's secret, takes the time from an "ok" vector and
// from nothing else; the same "ok" answer does not serve a device waiting
// for another nonce (a captured answer is worth nothing), and every time
// request vector the SDK would publish parses as the gateway parses it.
func TestTimeReplyVectors(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		TimeReplies []struct {
			Name, Secret, Message, Nonce, Expected string
			DeviceID                               string `json:"device_id"`
			Time                                   int64  `json:"time"`
		} `json:"time_replies"`
		TimeRequests []struct {
			Name, Message, Expected, Nonce string
		} `json:"time_requests"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.TimeReplies) == 0 || len(file.TimeRequests) == 0 {
		t.Fatal("no time vectors")
	}
	// deliver hands msg to a device of the vector waiting for nonce and
	// returns the time it took, or false.
	deliver := func(t *testing.T, id, secret, nonce, msg string) (int64, bool) {
		t.Helper()
		d := &Device{id: id, now: time.Now, downMAC: envelope.NewDownlinkMAC([]byte(secret)),
			waiters: map[string]chan result{}, timeWaiters: map[string]chan timeAnswer{}}
		ch := make(chan timeAnswer, 1)
		d.timeWaiters[nonce] = ch
		d.received(nil, fakeMessage{payload: []byte(msg)})
		select {
		case a := <-ch:
			return a.gateway, true
		default:
			return 0, false
		}
	}
	for _, v := range file.TimeReplies {
		t.Run(v.Name, func(t *testing.T) {
			ts, ok := deliver(t, v.DeviceID, v.Secret, v.Nonce, v.Message)
			if want := v.Expected == "ok"; ok != want || (want && ts != v.Time) {
				t.Fatalf("time taken: %v (%d); want %v (%d)", ok, ts, want, v.Time)
			}
			if v.Expected != "ok" {
				return
			}
			if _, err := parseDownlink(v.DeviceID, envelope.NewDownlinkMAC([]byte(v.Secret)), []byte(v.Message), time.Time{}); err != nil {
				t.Fatalf("OnDownlink would see an error: %v", err)
			}
			other := strings.Repeat("0", envelope.NonceLen)
			if _, ok := deliver(t, v.DeviceID, v.Secret, other, v.Message); ok {
				t.Fatal("the answer served a device waiting for another nonce")
			}
		})
	}
	for _, v := range file.TimeRequests {
		t.Run(v.Name, func(t *testing.T) {
			nonce, err := envelope.ParseTimeRequest([]byte(v.Message))
			if (err == nil) != (v.Expected == "ok") || string(nonce) != v.Nonce {
				t.Fatalf("ParseTimeRequest = %q, %v; want %s %q", nonce, err, v.Expected, v.Nonce)
			}
			if v.Expected == "ok" && v.Name == "time_request_basic" && string(envelope.TimeRequest(nonce)) != v.Message {
				t.Fatalf("the SDK's request for %s is %s, not the vector's", nonce, envelope.TimeRequest(nonce))
			}
		})
	}
}
