package validate_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

// FuzzCheck runs arbitrary messages, topics and clocks through a validator
// whose registry holds the topic's device with the vectors' default secret.
// Properties: no panic, no error (the stores cannot fail here), a known
// reason for every rejection, and an accepted message is well-formed, from
// the topic's device, fresh, correctly signed, and a replay the second time.
func FuzzCheck(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add(v.TopicDevice, v.Now, v.raw(f))
	}
	f.Fuzz(func(t *testing.T, topic string, now int64, raw []byte) {
		clock := func() time.Time { return time.Unix(now, 0) }
		keys := fakeKeys{topic: {Secret: secretA, Enabled: true}, "sensor_off": {Secret: secretA}}
		cfg := validate.DefaultConfig()
		v, err := validate.New(cfg, keys, replay.NewMemory(0, clock), clock)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		res, err := v.Check(ctx, topic, raw)
		if err != nil {
			t.Fatalf("Check error: %v", err)
		}
		if !res.Accepted() {
			if !slices.Contains(validate.Reasons, res.Rejection.Reason) {
				t.Fatalf("unknown reason %q", res.Rejection.Reason)
			}
			return
		}
		e := res.Envelope
		if e.DeviceID != topic || !json.Valid(raw) || !json.Valid(e.Payload) {
			t.Fatalf("accepted a message that is not well-formed or not from %q", topic)
		}
		if d := now - e.Timestamp; d > int64(cfg.MaxClockSkew/time.Second) || d < -int64(cfg.MaxClockSkew/time.Second) {
			t.Fatalf("accepted timestamp %d at now %d", e.Timestamp, now)
		}
		if !envelope.Verify(envelope.NewMAC(secretA), &e) {
			t.Fatal("accepted a message whose signature does not verify")
		}
		again, err := v.Check(ctx, topic, raw)
		if err != nil || again.Accepted() || again.Rejection.Reason != validate.Replay {
			t.Fatalf("second delivery: %v %v, want replay", again.Rejection, err)
		}
	})
}
