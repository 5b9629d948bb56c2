package validate_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

// TestCheckKeyOverlap: during a rotation's overlap both keys verify and the
// result says which; after the old key's expiry (injected clock) it is
// bad_signature; a key that matches nothing never verifies.
func TestCheckKeyOverlap(t *testing.T) {
	var mu sync.Mutex
	now := t0
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	oldS, newS := []byte("old-secret-0123456789"), []byte("new-secret-0123456789")
	expires := t0.Add(time.Hour)
	keys := fakeKeys{"sensor_001": {Enabled: true, Secret: newS, Keys: []validate.Key{
		{ID: 1, Secret: oldS, Expires: expires}, {ID: 2, Secret: newS}}}}
	v, err := validate.New(validate.DefaultConfig(), keys, replay.NewMemory(0, clock), clock)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	n := uint64(0)
	check := func(secret []byte) validate.Result {
		t.Helper()
		n++
		res, err := v.Check(ctx, "sensor_001", message(secret, clock().Unix(), uuidN(n), defPayload))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	tests := []struct {
		name    string
		at      time.Time
		secret  []byte
		want    validate.Reason
		wantKey int64
	}{
		{"old key in overlap", t0, oldS, "", 1},
		{"new key in overlap", t0, newS, "", 2},
		{"other key", t0, []byte("not-a-key-0123456789"), validate.BadSignature, 0},
		{"old key one second before expiry", expires.Add(-time.Second), oldS, "", 1},
		{"old key at expiry", expires, oldS, validate.BadSignature, 0},
		{"new key after expiry", expires.Add(time.Hour), newS, "", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			now = tc.at
			mu.Unlock()
			res := check(tc.secret)
			got := validate.Reason("")
			if res.Rejection != nil {
				got = res.Rejection.Reason
			}
			if got != tc.want || res.KeyID != tc.wantKey || res.Verified != (tc.wantKey != 0) {
				t.Fatalf("got %q key %d verified %v, want %q key %d", got, res.KeyID, res.Verified, tc.want, tc.wantKey)
			}
		})
	}
}

// TestCheckNoKeys: a device whose keys are all gone verifies nothing, not
// even a message signed with an empty key.
func TestCheckNoKeys(t *testing.T) {
	v := newValidator(t, validate.DefaultConfig(), fakeKeys{"sensor_001": {Enabled: true}}, nil, t0)
	for _, s := range [][]byte{nil, {}} {
		res, err := v.Check(context.Background(), "sensor_001", message(s, t0.Unix(), defMID, defPayload))
		if err != nil || res.Accepted() || res.Rejection.Reason != validate.BadSignature {
			t.Fatalf("no keys: %+v, %v", res.Rejection, err)
		}
	}
}
