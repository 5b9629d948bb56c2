package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/outbox"
)

// statsOnly is an outboxStore whose Stats is scripted (the other methods
// are not called).
type statsOnly struct {
	outboxStore
	oldest time.Time
}

func (s statsOnly) Stats(context.Context) (outbox.Stats, error) {
	return outbox.Stats{Oldest: s.oldest}, nil
}

// TestReadyPendingAge: /readyz is not ready while the oldest row waiting
// for the backend is older than http.ready_max_pending_age (forwarding
// stuck: with backend.max_payload_memory 0 on PostgreSQL nothing was ever
// claimed, and /readyz said ready), and is with a younger one or none.
func TestReadyPendingAge(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name   string
		oldest time.Time
		bound  time.Duration
		want   string
	}{
		{"empty outbox", time.Time{}, 5 * time.Minute, ""},
		{"young row", now.Add(-time.Minute), 5 * time.Minute, ""},
		{"stuck row", now.Add(-6 * time.Minute), 5 * time.Minute, "oldest pending row waits 6m0s"},
		{"check off", now.Add(-time.Hour), 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.HTTP.ReadyMaxPendingAge = tc.bound
			g := &Gateway{cfg: cfg, store: statsOnly{oldest: tc.oldest}, now: func() time.Time { return now }}
			got := g.pendingTooOld(context.Background())
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("pendingTooOld = %q, want %q", got, tc.want)
			}
		})
	}
}
