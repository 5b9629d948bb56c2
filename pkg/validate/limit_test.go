package validate_test

import (
	"context"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/validate"
)

// denyAll is a RateLimiter that refuses while deny is set and records
// which devices it was asked about.
type denyAll struct {
	deny  bool
	asked []string
	at    []time.Time
}

func (d *denyAll) Allow(id string, now time.Time) bool {
	d.asked = append(d.asked, id)
	d.at = append(d.at, now)
	return !d.deny
}

// TestRateLimitBeforeHMAC: a limited device's message is refused as
// rate_limited before its signature is checked (so a flood costs no HMAC)
// and before its id is recorded (so it fills no replay store and its
// later, allowed copy is accepted). Unknown devices never reach the
// limiter, so they cannot grow its memory.
func TestRateLimitBeforeHMAC(t *testing.T) {
	lim := &denyAll{deny: true}
	v := newValidator(t, validate.DefaultConfig(), defaultKeys(), nil, t0)
	v.LimitWith(lim)
	ctx := context.Background()

	forged := message([]byte("not-the-secret-of-sensor"), t0.Unix(), uuidN(1), defPayload)
	res, err := v.Check(ctx, "sensor_001", forged)
	if err != nil || res.Accepted() || res.Rejection.Reason != validate.RateLimited {
		t.Fatalf("forged message while limited: %+v, %v; want rate_limited (limit before HMAC)", res.Rejection, err)
	}
	good := message(secretA, t0.Unix(), uuidN(2), defPayload)
	if res, _ := v.Check(ctx, "sensor_001", good); res.Accepted() || res.Rejection.Reason != validate.RateLimited {
		t.Fatalf("valid message while limited: %+v; want rate_limited", res.Rejection)
	}
	lim.deny = false
	if res, _ := v.Check(ctx, "sensor_001", good); !res.Accepted() {
		t.Fatalf("same message once allowed: %v; want accepted (a refused id must not be recorded)", res.Rejection)
	}
	if res, _ := v.Check(ctx, "sensor_001", forged); res.Accepted() || res.Rejection.Reason != validate.BadSignature {
		t.Fatalf("forged message once allowed: %+v; want bad_signature", res.Rejection)
	}
	ge := envelope.New(secretA, "ghost", t0.Unix(), uuidN(3), []byte(defPayload))
	ghost := envelope.AppendJSON(nil, &ge)
	lim.asked = nil
	v.Check(ctx, "ghost", ghost)                  //nolint:errcheck
	v.Check(ctx, "sensor_002", ghost)             //nolint:errcheck // identity mismatch
	v.Check(ctx, "sensor_001", []byte("garbage")) //nolint:errcheck
	if len(lim.asked) != 0 {
		t.Fatalf("limiter asked about %v; unknown, mismatched and malformed messages must not reach it", lim.asked)
	}
	if lim.at[0] != t0 {
		t.Fatalf("limiter got time %v, want the injected clock's %v", lim.at[0], t0)
	}
}
