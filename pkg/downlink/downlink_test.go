package downlink_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/downlink"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

var (
	t0      = time.Unix(1727712000, 0)
	secretA = []byte("secret-of-sensor_001-0123456789")
)

type fakeKeys map[string]validate.Device

func (k fakeKeys) Device(_ context.Context, id string) (validate.Device, error) {
	d, ok := k[id]
	if !ok {
		return validate.Device{}, validate.ErrUnknownDevice
	}
	return d, nil
}

func reply() envelope.Envelope {
	return envelope.Envelope{DeviceID: "sensor_001", TimestampRaw: []byte("1727712000"), Timestamp: 1727712000,
		MessageID: []byte("550e8400-e29b-41d4-a716-446655440000"), Payload: []byte(`{"ok":true}`)}
}

// TestSign: a downlink is signed with the downlink key, never the uplink
// one, so a reply republished as an uplink does not verify (finding 2 of
// issue 9); the cached downlink key follows a changed secret; an unknown
// device gets nothing.
func TestSign(t *testing.T) {
	keys := fakeKeys{"sensor_001": {Secret: secretA, Enabled: true}}
	clock := func() time.Time { return t0 }
	s := downlink.New(keys, clock)
	ctx := context.Background()
	e := reply()
	if err := s.Sign(ctx, &e); err != nil {
		t.Fatal(err)
	}
	if want := envelope.SignDownlink(secretA, &e); e.Signature != want {
		t.Fatalf("Sign = %x, want the downlink signature %x", e.Signature, want)
	}
	if e.Signature == envelope.Sign(secretA, &e) {
		t.Fatal("Sign used the uplink key")
	}
	v, err := validate.New(validate.DefaultConfig(), keys, replay.NewMemory(0, clock), clock)
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Check(ctx, "sensor_001", envelope.AppendJSON(nil, &e))
	if err != nil || res.Accepted() || res.Rejection.Reason != validate.BadSignature {
		t.Fatalf("reflected downlink: %+v, %v; want bad_signature", res.Rejection, err)
	}
	rotated := []byte("a-rotated-secret-for-sensor_001")
	keys["sensor_001"] = validate.Device{Secret: rotated, Enabled: true}
	if err := s.Sign(ctx, &e); err != nil || e.Signature != envelope.SignDownlink(rotated, &e) {
		t.Fatalf("Sign after a secret change: %v, not signed with the new downlink key", err)
	}
	e.DeviceID = "ghost"
	if err := s.Sign(ctx, &e); !errors.Is(err, validate.ErrUnknownDevice) {
		t.Fatalf("Sign for unknown device = %v", err)
	}
}

// TestSignPicksKey: downlinks are signed with the key asked for while it
// is valid, else the newest valid key.
func TestSignPicksKey(t *testing.T) {
	oldS, newS := []byte("old-secret-0123456789"), []byte("new-secret-0123456789")
	keys := fakeKeys{"sensor_001": {Enabled: true, Secret: newS, Keys: []validate.Key{
		{ID: 1, Secret: oldS, Expires: t0.Add(time.Hour)}, {ID: 2, Secret: newS}}}}
	for _, tc := range []struct {
		name  string
		now   time.Time
		keyID int64
		want  []byte
	}{
		{"newest used is the old key", t0, 1, oldS},
		{"newest used is the new key", t0, 2, newS},
		{"none used yet", t0, 0, newS},
		{"used key expired", t0.Add(2 * time.Hour), 1, newS},
		{"unknown key id", t0, 9, newS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := downlink.New(keys, func() time.Time { return tc.now })
			e := reply()
			if err := s.SignWith(context.Background(), &e, tc.keyID); err != nil {
				t.Fatal(err)
			}
			if e.Signature != envelope.SignDownlink(tc.want, &e) {
				t.Fatal("signed with the wrong key (want the downlink key of the expected secret)")
			}
		})
	}
}

// TestUsedKeepsNewest: downlinks follow the newest key a device has used;
// an old-key message in flight after a rotation does not move them back.
func TestUsedKeepsNewest(t *testing.T) {
	s := downlink.New(fakeKeys{}, time.Now)
	if got := s.KeyFor("d"); got != 0 {
		t.Fatalf("before any message: %d, want 0 (newest valid key)", got)
	}
	for _, tc := range []struct {
		used, want int64
	}{{1, 1}, {2, 2}, {1, 2}, {3, 3}, {2, 3}} {
		s.Used("d", tc.used, 3)
		if got := s.KeyFor("d"); got != tc.want {
			t.Fatalf("after key %d: key %d, want %d", tc.used, got, tc.want)
		}
	}
	if got := s.KeyFor("other"); got != 0 {
		t.Fatalf("another device: %d", got)
	}
}

// TestUsedForgetsRemovedRegistration: a device removed and registered
// again starts over at key 1. The key id remembered from the old
// registration (3, which no longer exists) must not stick: downlinks
// follow the key the device uses now, also once a rotation adds key 2 and
// the device has not switched to it yet.
func TestUsedForgetsRemovedRegistration(t *testing.T) {
	s := downlink.New(fakeKeys{}, time.Now)
	s.Used("d", 3, 3) // the old registration's newest key
	s.Used("d", 1, 1) // registered again: keys {1}
	if got := s.KeyFor("d"); got != 1 {
		t.Fatalf("after re-registration: key %d, want 1", got)
	}
	s.Used("d", 1, 2) // rotated: keys {1, 2}, the device still on 1
	if got := s.KeyFor("d"); got != 1 {
		t.Fatalf("during the overlap: key %d, want 1 (the device has not used key 2)", got)
	}
}
