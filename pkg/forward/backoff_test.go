package forward_test

import (
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
)

var t0 = time.Unix(1727712000, 0)

// fakeClock is a settable clock that counts how often it was read.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	reads int
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) Reads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

func TestExponentialJitterBounds(t *testing.T) {
	tests := []struct {
		name         string
		initial, max time.Duration
		attempt      int
		lo, hi       time.Duration // every delay is in [lo, hi]
	}{
		{"first retry", 200 * time.Millisecond, 30 * time.Second, 1, 100 * time.Millisecond, 200 * time.Millisecond},
		{"second doubles", 200 * time.Millisecond, 30 * time.Second, 2, 200 * time.Millisecond, 400 * time.Millisecond},
		{"fifth", 200 * time.Millisecond, 30 * time.Second, 5, 1600 * time.Millisecond, 3200 * time.Millisecond},
		{"just below the cap", 200 * time.Millisecond, 30 * time.Second, 8, 12800 * time.Millisecond, 25600 * time.Millisecond},
		{"capped", 200 * time.Millisecond, 30 * time.Second, 9, 15 * time.Second, 30 * time.Second},
		{"far past the cap", 200 * time.Millisecond, 30 * time.Second, 1000, 15 * time.Second, 30 * time.Second},
		{"cap not a power of two of initial", time.Second, 3 * time.Second, 3, 1500 * time.Millisecond, 3 * time.Second},
		{"attempt 0 treated as the first", time.Second, time.Minute, 0, 500 * time.Millisecond, time.Second},
		{"initial equal to max", time.Second, time.Second, 7, 500 * time.Millisecond, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := forward.ExponentialJitter(tc.initial, tc.max)
			seen := map[time.Duration]bool{}
			for range 500 {
				d := b(tc.attempt)
				if d < tc.lo || d > tc.hi {
					t.Fatalf("attempt %d: delay %v outside [%v, %v]", tc.attempt, d, tc.lo, tc.hi)
				}
				seen[d] = true
			}
			// Jitter: 500 draws from a range of ≥ 10^8 ns are not all equal.
			if len(seen) < 2 {
				t.Errorf("attempt %d: 500 draws gave one value; no jitter", tc.attempt)
			}
		})
	}
}

// TestExponentialJitterGrows: while doubling stays under the cap (10 ms ×
// 2⁹ = 5.12 s < 10 s), each attempt's shortest delay is at least the
// previous attempt's longest, so retries never come faster; after that the
// delays stay in [cap/2, cap].
func TestExponentialJitterGrows(t *testing.T) {
	const initial, limit = 10 * time.Millisecond, 10 * time.Second
	b := forward.ExponentialJitter(initial, limit)
	prevMax := time.Duration(0)
	for attempt := 1; attempt <= 20; attempt++ {
		lo, hi := time.Duration(1<<62), time.Duration(0)
		for range 200 {
			d := b(attempt)
			lo, hi = min(lo, d), max(hi, d)
		}
		switch {
		case attempt <= 10 && lo < prevMax:
			t.Fatalf("attempt %d: shortest delay %v below the previous attempt's longest %v", attempt, lo, prevMax)
		case attempt > 10 && lo < limit/2:
			t.Fatalf("attempt %d (capped): shortest delay %v below cap/2", attempt, lo)
		case hi > limit:
			t.Fatalf("attempt %d: delay %v above the cap %v", attempt, hi, limit)
		}
		prevMax = hi
	}
}

func TestBreaker(t *testing.T) {
	const cooldown = 10 * time.Second
	type step struct {
		op       string        // allow, ok (Success), fail (Failure), wait (advance the clock)
		d        time.Duration // for wait
		allow    bool          // for allow: want this answer
		waitHint time.Duration // for allow when refused: want this wait
		open     bool          // Open() after the step
	}
	allow := step{op: "allow", allow: true}
	refused := func(w time.Duration, open bool) step { return step{op: "allow", waitHint: w, open: open} }
	tests := []struct {
		name      string
		threshold int
		steps     []step
	}{
		{"closed lets calls through", 3, []step{allow, allow, {op: "fail"}, allow, {op: "fail"}, allow}},
		{"opens at the threshold", 3, []step{
			{op: "fail"}, {op: "fail"}, {op: "fail", open: true},
			refused(cooldown, true),
		}},
		{"a success resets the consecutive count", 3, []step{
			{op: "fail"}, {op: "fail"}, {op: "ok"}, {op: "fail"}, {op: "fail"}, allow,
		}},
		{"waits the rest of the cooldown", 1, []step{
			{op: "fail", open: true},
			{op: "wait", d: 4 * time.Second, open: true},
			refused(6*time.Second, true),
			{op: "wait", d: 5999 * time.Millisecond, open: true},
			refused(time.Millisecond, true),
		}},
		{"half-open lets exactly one probe through", 2, []step{
			{op: "fail"}, {op: "fail", open: true},
			{op: "wait", d: cooldown, open: true},
			{op: "allow", allow: true, open: true},
			refused(cooldown/4, true),
			refused(cooldown/4, true),
		}},
		{"a successful probe closes it", 2, []step{
			{op: "fail"}, {op: "fail", open: true},
			{op: "wait", d: cooldown, open: true},
			{op: "allow", allow: true, open: true},
			{op: "ok"},
			allow, allow,
		}},
		{"a failed probe reopens it for a full cooldown", 2, []step{
			{op: "fail"}, {op: "fail", open: true},
			{op: "wait", d: cooldown + 3*time.Second, open: true},
			{op: "allow", allow: true, open: true},
			{op: "wait", d: time.Second, open: true},
			{op: "fail", open: true},
			refused(cooldown, true),
			{op: "wait", d: cooldown, open: true},
			{op: "allow", allow: true, open: true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeClock(t0)
			b := forward.NewBreaker(tc.threshold, cooldown, c.Now)
			for i, s := range tc.steps {
				switch s.op {
				case "allow":
					ok, wait := b.Allow()
					if ok != s.allow || (!ok && wait != s.waitHint) || (ok && wait != 0) {
						t.Fatalf("step %d: Allow() = %v, %v; want %v, %v", i, ok, wait, s.allow, s.waitHint)
					}
				case "ok":
					b.Success()
				case "fail":
					b.Failure()
				case "wait":
					c.Add(s.d)
				}
				if got := b.Open(); got != s.open {
					t.Fatalf("step %d (%s): Open() = %v, want %v", i, s.op, got, s.open)
				}
			}
		})
	}
}

// TestBreakerOnChange: the hook hears each opening and closing once; a
// failed probe while open and successes while closed are not changes.
func TestBreakerOnChange(t *testing.T) {
	now := time.Unix(0, 0)
	b := forward.NewBreaker(2, time.Second, func() time.Time { return now })
	var got []bool
	b.OnChange(func(open bool) { got = append(got, open) })
	b.Success()
	b.Failure()
	b.Failure() // opens
	now = now.Add(time.Second)
	b.Allow()
	b.Failure() // the probe failed: still open
	now = now.Add(time.Second)
	b.Allow()
	b.Success() // closes
	b.Success()
	if len(got) != 2 || !got[0] || got[1] {
		t.Fatalf("changes = %v, want [true false]", got)
	}
}
