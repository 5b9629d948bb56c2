package backendsig

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestCounterRelabelRefused: someone between the gateway and the backend
// takes a counter-mode request, drops X-Device-Counter and puts its v2
// field ("counter:42") in X-Device-Timestamp. The signing bytes are the
// same, so without the digits check the relabelled request verified, and
// a backend that tells the modes apart by header was misled.
func TestCounterRelabelRefused(t *testing.T) {
	key := []byte("6b2f0f4e1c9a8d7e5b3a29f1c0d4e8b7a6f5e4d3c2b1a09f8e7d6c5b4a392817")
	now := time.Unix(1727712005, 0)
	body := []byte(`{"temperature":22.5}`)
	h := Signed{DeviceID: "sensor_001", IdempotencyKey: "550e8400-e29b-41d4-a716-446655440000", DeviceCounter: "42", Seq: "7"}
	sig := Sign(key, SchemeV2, "POST", "/ingest/sensor_001", h, now.Unix(), body)
	req := func(name, value string) error {
		r := httptest.NewRequest("POST", "/ingest/sensor_001", strings.NewReader(string(body)))
		r.Header.Set("X-Device-Id", h.DeviceID)
		r.Header.Set("Idempotency-Key", h.IdempotencyKey)
		r.Header.Set(name, value)
		r.Header.Set("X-Iotgw-Seq", "7")
		r.Header.Set(SignatureHeader, sig)
		r.Header.Set(TimestampHeader, "1727712005")
		return VerifyRequest(key, SchemeV2, r, body, now, 5*time.Minute)
	}
	if err := req("X-Device-Counter", "42"); err != nil {
		t.Fatalf("the request as sent: %v", err)
	}
	for _, c := range []struct{ name, value string }{
		{"X-Device-Timestamp", "counter:42"},
		{"X-Device-Counter", "+42"},
		{"X-Device-Timestamp", " 1727712001"},
	} {
		if err := req(c.name, c.value); !errors.Is(err, ErrSignatureInvalid) {
			t.Errorf("%s: %s verified (%v), want ErrSignatureInvalid", c.name, c.value, err)
		}
	}
}
