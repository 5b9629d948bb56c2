// Package tick makes the process's periodic timers fire together.
//
// An idle gateway still has periodic work: the registry's change check,
// the audit writer's flush, the broker watch, the lease forwarder's poll,
// the outbox's foreign-row poll, the GOMAXPROCS governor. Each ticker
// started at its own moment wakes the process at its own phase, and on a
// virtual machine each wake-up of an idle process costs far more than the
// work it does (cold caches; docs/PERFORMANCE.md, "Idle"). Aligned tickers
// tick on multiples of their period on the wall clock, so that tickers
// whose periods divide one another wake the process in the same instant.
package tick

import "time"

// Aligned returns a ticker of period d whose ticks fall on multiples of d
// of the wall clock (time.Now().Truncate(d)), and the function that stops
// it. Until the first boundary it is an ordinary time.Ticker of period d:
// it never ticks sooner than d after it was made, nor later than 2d.
// Once aligned it ticks on the monotonic clock, like any time.Ticker, so
// a step of the wall clock does not move it.
func Aligned(d time.Duration) (*time.Ticker, func()) {
	t := time.NewTicker(d)
	now := time.Now()
	first := now.Truncate(d).Add(d).Sub(now)
	if first <= 0 || first >= d {
		return t, t.Stop
	}
	align := time.AfterFunc(first, func() { t.Reset(d) })
	return t, func() {
		align.Stop()
		t.Stop()
	}
}
