package forward

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Backoff returns how long to wait before retry number attempt (1-based).
type Backoff func(attempt int) time.Duration

// ExponentialJitter doubles from initial up to max, then picks uniformly in
// [d/2, d] ("equal jitter"), so retries from many devices spread out.
func ExponentialJitter(initial, max time.Duration) Backoff {
	return func(attempt int) time.Duration {
		d := initial
		for i := 1; i < attempt && d < max; i++ {
			d *= 2
		}
		if d > max {
			d = max
		}
		half := d / 2
		return half + rand.N(half+1) //nolint:gosec // G404: retry jitter, not a secret; predictability costs nothing
	}
}

// Breaker is a consecutive-failure circuit breaker. Closed, it lets every
// call through; after threshold failures in a row it opens for cooldown;
// then it lets a single probe through (half-open), closing again on success.
type Breaker struct {
	mu        sync.Mutex
	threshold int
	cooldown  time.Duration
	now       func() time.Time
	failures  int
	openUntil time.Time
	probing   bool
	onChange  func(open bool)
}

// OnChange sets f to run when the breaker opens (true) or closes again
// (false), outside its lock. Call it before use; f must not block.
func (b *Breaker) OnChange(f func(open bool)) { b.onChange = f }

// NewBreaker returns a closed breaker.
func NewBreaker(threshold int, cooldown time.Duration, now func() time.Time) *Breaker {
	return &Breaker{threshold: threshold, cooldown: cooldown, now: now}
}

// Allow reports whether a call may go now; if not, it says how long to wait.
func (b *Breaker) Allow() (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures < b.threshold {
		return true, 0
	}
	if wait := b.openUntil.Sub(b.now()); wait > 0 {
		return false, wait
	}
	if b.probing {
		return false, b.cooldown / 4
	}
	b.probing = true
	return true, 0
}

// Success records a successful call and closes the breaker.
func (b *Breaker) Success() {
	b.mu.Lock()
	closed := b.failures >= b.threshold
	b.failures, b.probing = 0, false
	b.mu.Unlock()
	if closed && b.onChange != nil {
		b.onChange(false)
	}
}

// Failure records a failed call, opening the breaker at the threshold.
func (b *Breaker) Failure() {
	b.mu.Lock()
	b.failures++
	b.probing = false
	opened := b.failures == b.threshold // a failed probe keeps it open: not a change
	if b.failures >= b.threshold {
		b.openUntil = b.now().Add(b.cooldown)
	}
	b.mu.Unlock()
	if opened && b.onChange != nil {
		b.onChange(true)
	}
}

// Abandon ends a call that says nothing about the backend's health (the
// request could not even be built): a probe it held is released, so the
// next call may probe, and the failure count is left as it was.
func (b *Breaker) Abandon() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

// Cooling reports whether the breaker is open and its cooldown not over:
// no call, not even a probe, would be let through now. Past the cooldown
// an open breaker waits for a call to probe the backend; work held back
// while it is Open rather than Cooling would never come to make that call.
func (b *Breaker) Cooling() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failures >= b.threshold && b.now().Before(b.openUntil)
}

// Open reports whether the breaker is open (refusing calls but, past its
// cooldown, one probe at a time).
func (b *Breaker) Open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failures >= b.threshold
}
