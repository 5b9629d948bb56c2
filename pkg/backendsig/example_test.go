package backendsig_test

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/iotgw/iotgw/pkg/backendsig"
)

// Example signs the worked example of docs/PROTOCOL.md 4b and checks it
// as a backend would, from the request it receives.
func Example() {
	key := []byte("6b2f0f4e1c9a8d7e5b3a29f1c0d4e8b7a6f5e4d3c2b1a09f8e7d6c5b4a392817")
	body := `{"temperature":22.5}`
	h := backendsig.Signed{DeviceID: "sensor_001", IdempotencyKey: "550e8400-e29b-41d4-a716-446655440000",
		DeviceTimestamp: "1727712000", Seq: "42"}
	sig := backendsig.Sign(key, backendsig.SchemeV2, "POST", "/ingest/sensor_001", h, 1727712005, []byte(body))
	fmt.Println(sig)

	r := httptest.NewRequest("POST", "/ingest/sensor_001", strings.NewReader(body))
	r.Header.Set("X-Device-Id", h.DeviceID)
	r.Header.Set("Idempotency-Key", h.IdempotencyKey)
	r.Header.Set("X-Device-Timestamp", h.DeviceTimestamp)
	r.Header.Set("X-Iotgw-Seq", h.Seq)
	r.Header.Set(backendsig.TimestampHeader, "1727712005")
	r.Header.Set(backendsig.SignatureHeader, sig)
	err := backendsig.VerifyRequest(key, backendsig.SchemeV2, r, []byte(body), time.Unix(1727712010, 0), 5*time.Minute)
	fmt.Println("verified:", err == nil)
	// Output:
	// v2=6a82850be31c8c4abd21d4b88aeedb32ccdbea1e580493b5acaa6abda9e99489
	// verified: true
}
