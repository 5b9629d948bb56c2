package device

import (
	"errors"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

func TestParseDownlink(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	const id = "sensor_001"
	// signed returns a downlink as the gateway signs it, with the
	// downlink key of secret key.
	signed := func(dev string, key []byte, payload string) []byte {
		e := envelope.New(envelope.DownlinkKey(key), dev, 1700000000, string(envelope.NewMessageID()), []byte(payload))
		return envelope.AppendJSON(nil, &e)
	}
	uplinkKey := envelope.New(secret, id, 1700000000, string(envelope.NewMessageID()), []byte(`{"in_reply_to":"m1","error":"stale"}`))
	tests := []struct {
		name    string
		raw     []byte
		want    Reply
		wantErr error
	}{
		{"forwarded", signed(id, secret, `{"in_reply_to":"m1","status":200,"body":{"ok":true}}`),
			Reply{InReplyTo: "m1", Status: 200}, nil},
		{"truncated", signed(id, secret, `{"in_reply_to":"m1","status":200,"body":"abc","truncated":true}`),
			Reply{InReplyTo: "m1", Status: 200, Truncated: true}, nil},
		{"rejected, null id", signed(id, secret, `{"in_reply_to":null,"error":"malformed"}`),
			Reply{Reason: "malformed"}, nil},
		{"wrong key", signed(id, []byte("another-secret-of-16+"), `{"in_reply_to":"m1","error":"stale"}`),
			Reply{InReplyTo: "m1", Reason: "stale"}, ErrBadReplySignature},
		{"uplink key, not the downlink key", envelope.AppendJSON(nil, &uplinkKey), Reply{InReplyTo: "m1", Reason: "stale"}, ErrBadReplySignature},
		{"other device", signed("sensor_002", secret, `{"in_reply_to":"m1","error":"stale"}`), Reply{InReplyTo: "m1", Reason: "stale"}, ErrBadReplySignature},
		{"not an envelope", []byte(`{"in_reply_to":"m1"}`), Reply{}, ErrMalformedReply},
		{"payload not a reply", signed(id, secret, `[1,2]`), Reply{}, ErrMalformedReply},
		{"neither status nor error", signed(id, secret, `{"in_reply_to":"m1"}`), Reply{InReplyTo: "m1"}, ErrMalformedReply},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDownlink(id, envelope.NewDownlinkMAC(secret), tc.raw, time.Time{})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if got.InReplyTo != tc.want.InReplyTo || got.Status != tc.want.Status || got.Reason != tc.want.Reason || got.Truncated != tc.want.Truncated {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if string(got.Raw) != string(tc.raw) {
				t.Errorf("Raw = %s", got.Raw)
			}
		})
	}
}
