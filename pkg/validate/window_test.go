package validate_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

// seqClock returns its times one read at a time, then the last one for
// ever, so a second read of the clock inside one Check sees a later time
// (the tick between two reads that finding 3 of issue 9 exploited).
type seqClock struct {
	mu    sync.Mutex
	times []time.Time
}

func (c *seqClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.times[0]
	if len(c.times) > 1 {
		c.times = c.times[1:]
	}
	return t
}

// TestCheckWindowEdgeOneClockRead: a copy of a message exactly
// max_clock_skew old must be refused as a replay even when the clock moves
// between the freshness check and the replay store (a second boundary, or
// a forward clock step). The validator reads the clock once per Check and
// hands that instant to the store.
func TestCheckWindowEdgeOneClockRead(t *testing.T) {
	skew := validate.DefaultConfig().MaxClockSkew
	tests := []struct {
		name  string
		reads []time.Time // successive clock reads
		ts    time.Time   // the message's timestamp
	}{
		// Reads at .2, .5, .8, 1.1 s past t0: a store reading the clock
		// itself would see the second copy in the next second, one past
		// the id's expiry, right after the freshness check passed it.
		{"second ticks at the edge", []time.Time{ms(200), ms(500), ms(800), ms(1100)}, t0.Add(-skew)},
		// An NTP step of +60 s right after the second freshness check: the
		// copy is 4.5 min old, fresh, but +60 s it would look expired.
		{"forward clock step", []time.Time{t0, t0, t0, t0.Add(time.Minute)}, t0.Add(-skew + 30*time.Second)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := &seqClock{times: tc.reads}
			v, err := validate.New(validate.DefaultConfig(), defaultKeys(), replay.NewMemory(0, clock.Now), clock.Now)
			if err != nil {
				t.Fatal(err)
			}
			msg := message(secretA, tc.ts.Unix(), defMID, defPayload)
			accepted := 0
			var reasons []validate.Reason
			for range 2 {
				res, err := v.Check(context.Background(), "sensor_001", msg)
				if err != nil {
					t.Fatal(err)
				}
				if res.Accepted() {
					accepted++
				} else {
					reasons = append(reasons, res.Rejection.Reason)
				}
			}
			if accepted != 1 || len(reasons) != 1 || reasons[0] != validate.Replay {
				t.Fatalf("accepted %d of 2 copies (rejections %v), want 1 and one replay", accepted, reasons)
			}
		})
	}
}

func ms(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
