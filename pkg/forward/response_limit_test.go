package forward

import (
	"strings"
	"testing"
)

// TestMaxResponseBytesBound: backend.max_response_bytes has an upper bound
// (finding 6 of issue 9); a reply relays at most envelope.MaxReplyBytes of
// it anyway, and each worker holds a body in memory.
func TestMaxResponseBytesBound(t *testing.T) {
	for _, tc := range []struct {
		max     int64
		wantErr bool
	}{{0, false}, {16 << 10, false}, {MaxResponseBytesLimit, false}, {MaxResponseBytesLimit + 1, true}, {1 << 40, true}, {-1, true}} {
		cfg := DefaultConfig()
		cfg.URL = "http://127.0.0.1:1/ingest/{device_id}"
		cfg.MaxResponseBytes = tc.max
		err := cfg.Validate()
		if (err != nil) != tc.wantErr || err != nil && !strings.Contains(err.Error(), "backend.max_response_bytes") {
			t.Errorf("max_response_bytes %d: Validate() = %v, want error %v", tc.max, err, tc.wantErr)
		}
	}
}
