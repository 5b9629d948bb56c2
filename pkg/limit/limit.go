package limit

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// MaxTracked is how many devices each limiter remembers; the least
// recently seen is forgotten beyond it. A device that is sending is always
// recently seen, so a flooder is never the one evicted.
const MaxTracked = 1 << 16

// tracked is an LRU of per-device state under one mutex.
type tracked[V any] struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, V]
}

func newTracked[V any](size int) *tracked[V] {
	l, err := simplelru.NewLRU[string, V](size, nil)
	if err != nil {
		panic(err) // size is a positive constant
	}
	return &tracked[V]{lru: l}
}

// with runs f on key's value (made by mk when missing) under the lock.
func (t *tracked[V]) with(key string, mk func() V, f func(V) bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.lru.Get(key)
	if !ok {
		v = mk()
		t.lru.Add(key, v)
	}
	return f(v)
}

func (t *tracked[V]) set(key string, v V) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lru.Add(key, v)
}

func (t *tracked[V]) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lru.Len()
}

// Devices is a token bucket per device. It implements validate.RateLimiter.
// The zero rate is never used: NewDevices returns nil for it, and a nil
// *Devices allows everything.
type Devices struct {
	limit   rate.Limit
	burst   int
	buckets *tracked[*rate.Limiter]
	limited atomic.Int64
	// recent is when each device was last refused (for a gauge).
	recent *tracked[time.Time]
}

// NewDevices returns a limiter of perSecond messages with burst, or nil
// when perSecond is 0 (off).
func NewDevices(perSecond float64, burst int) *Devices {
	if perSecond <= 0 {
		return nil
	}
	return &Devices{limit: rate.Limit(perSecond), burst: burst,
		buckets: newTracked[*rate.Limiter](MaxTracked), recent: newTracked[time.Time](MaxTracked)}
}

// Allow reports whether deviceID may send one more message at now, and
// takes a token if so. It never blocks beyond a mutex.
func (d *Devices) Allow(deviceID string, now time.Time) bool {
	if d == nil {
		return true
	}
	ok := d.buckets.with(deviceID, func() *rate.Limiter { return rate.NewLimiter(d.limit, d.burst) },
		func(l *rate.Limiter) bool { return l.AllowN(now, 1) })
	if !ok {
		d.limited.Add(1)
		d.recent.set(deviceID, now)
	}
	return ok
}

// Limited returns how many messages Allow refused.
func (d *Devices) Limited() int64 {
	if d == nil {
		return 0
	}
	return d.limited.Load()
}

// LimitedDevices returns how many devices were refused a message within
// the last `within` before now.
func (d *Devices) LimitedDevices(now time.Time, within time.Duration) int {
	if d == nil {
		return 0
	}
	d.recent.mu.Lock()
	defer d.recent.mu.Unlock()
	n := 0
	for _, t := range d.recent.lru.Values() {
		if now.Sub(t) <= within {
			n++
		}
	}
	return n
}

// Tracked returns how many devices have a bucket (at most MaxTracked).
func (d *Devices) Tracked() int {
	if d == nil {
		return 0
	}
	return d.buckets.len()
}

// Notices limits rejection notices: one per device and reason per
// interval.
type Notices struct {
	interval   time.Duration
	last       *tracked[*time.Time]
	suppressed atomic.Int64
}

// NewNotices returns an empty notice limiter letting one notice per device
// and reason through per interval, or nil when interval is 0 (off); a nil
// *Notices allows every notice.
func NewNotices(interval time.Duration) *Notices {
	if interval <= 0 {
		return nil
	}
	return &Notices{interval: interval, last: newTracked[*time.Time](MaxTracked)}
}

// Allow reports whether a notice for reason may go to deviceID at now, and
// if so remembers now as its last one. A refusal is counted.
func (n *Notices) Allow(deviceID, reason string, now time.Time) bool {
	if n == nil {
		return true
	}
	ok := n.last.with(deviceID+"\x00"+reason, func() *time.Time { return new(time.Time) }, func(last *time.Time) bool {
		if !last.IsZero() && now.Sub(*last) < n.interval {
			return false
		}
		*last = now
		return true
	})
	if !ok {
		n.suppressed.Add(1)
	}
	return ok
}

// Suppressed returns how many notices Allow refused.
func (n *Notices) Suppressed() int64 {
	if n == nil {
		return 0
	}
	return n.suppressed.Load()
}

// Quarantine counts bad_signature rejections per device and trips once a
// device has had After of them within Window.
type Quarantine struct {
	after  int
	window time.Duration
	rings  *tracked[*ring]
	trips  atomic.Int64
}

// ring holds a device's last `after` bad_signature times, oldest at next.
type ring struct {
	at   []time.Time
	next int
	n    int
}

// NewQuarantine returns a quarantine counter, or nil when after is 0 (off);
// a nil *Quarantine never trips.
func NewQuarantine(after int, window time.Duration) *Quarantine {
	if after <= 0 {
		return nil
	}
	return &Quarantine{after: after, window: window, rings: newTracked[*ring](MaxTracked)}
}

// BadSignature records one bad_signature rejection of deviceID at now and
// reports whether this one trips the quarantine: the device has had After
// of them within Window. It then starts counting afresh, so it trips once
// per After rejections, not on every later one.
func (q *Quarantine) BadSignature(deviceID string, now time.Time) bool {
	if q == nil {
		return false
	}
	trip := q.rings.with(deviceID, func() *ring { return &ring{at: make([]time.Time, q.after)} }, func(r *ring) bool {
		r.at[r.next] = now
		r.next = (r.next + 1) % len(r.at)
		if r.n < len(r.at) {
			r.n++
		}
		// The oldest of the last `after` is at r.next once the ring is full.
		if r.n == len(r.at) && now.Sub(r.at[r.next%len(r.at)]) <= q.window {
			r.n, r.next = 0, 0
			return true
		}
		return false
	})
	if trip {
		q.trips.Add(1)
	}
	return trip
}

// Trips returns how many times the quarantine tripped.
func (q *Quarantine) Trips() int64 {
	if q == nil {
		return 0
	}
	return q.trips.Load()
}
