package gateway

import (
	"sync"
	"sync/atomic"
)

// deviceQuota counts each device's rows in the outbox (accepted, not yet
// settled) against outbox.max_pending_per_device, so that one device
// cannot take the whole fleet's outbox. It is on the hot path: after a
// device's first message a check is a lock-free map read and one atomic
// add. Counters are never removed (one per device that ever had a message
// accepted).
type deviceQuota struct {
	max  int64 // 0: off
	devs sync.Map
}

func newDeviceQuota(max int) *deviceQuota { return &deviceQuota{max: int64(max)} }

func (q *deviceQuota) counter(dev string) *atomic.Int64 {
	if c, ok := q.devs.Load(dev); ok {
		return c.(*atomic.Int64)
	}
	c, _ := q.devs.LoadOrStore(dev, new(atomic.Int64))
	return c.(*atomic.Int64)
}

// take counts one more row for dev and reports true, or reports false
// (counting nothing) when dev already holds its quota.
func (q *deviceQuota) take(dev string) bool {
	if q.max == 0 {
		return true
	}
	c := q.counter(dev)
	if c.Add(1) > q.max {
		c.Add(-1)
		return false
	}
	return true
}

// force counts a row that exists already (reloaded at start, or a dead
// letter retried by the CLI), over quota or not.
func (q *deviceQuota) force(dev string) {
	if q.max != 0 {
		q.counter(dev).Add(1)
	}
}

// release uncounts a row that left the outbox (settled or dead-lettered)
// or never entered it.
func (q *deviceQuota) release(dev string) {
	if q.max != 0 {
		q.counter(dev).Add(-1)
	}
}

// held returns dev's count.
func (q *deviceQuota) held(dev string) int64 {
	if q.max == 0 {
		return 0
	}
	return q.counter(dev).Load()
}
