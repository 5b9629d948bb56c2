package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/validate"
)

// inflightReplay wraps the replay store to remember which accepted ids are
// not yet durable. When the broker redelivers such a message (the
// connection dropped before our ack), the copy is a replay of itself: it is
// acked together with the original once that commits, instead of being
// rejected and acked at once, which could lose the message in a crash.
type inflightReplay struct {
	validate.ReplayStore
	mu      sync.Mutex
	pending map[string]*inflight
}

type inflight struct {
	acks []func()
}

func newInflightReplay(inner validate.ReplayStore) *inflightReplay {
	return &inflightReplay{ReplayStore: inner, pending: make(map[string]*inflight)}
}

func inflightKey(deviceID string, id [16]byte) string { return deviceID + "\x00" + string(id[:]) }

// Record records like the inner store and, for a fresh id, marks it in
// flight in the same critical section, so a redelivered copy can never slip
// between the two.
func (r *inflightReplay) Record(ctx context.Context, deviceID string, id [16]byte, expires, now time.Time) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	dup, err := r.ReplayStore.Record(ctx, deviceID, id, expires, now)
	if err == nil && !dup {
		r.pending[inflightKey(deviceID, id)] = &inflight{}
	}
	return dup, err
}

// begin marks a counter-mode message in flight, which the validator does
// not (it keeps no replay id for it: the commit's bound is the authority),
// keyed by its counter (outbox.CounterID). It reports false, with ack
// attached to the copy already in flight, when one is: a redelivery
// waits for the first copy's commit, as a timestamp-mode one does.
func (r *inflightReplay) begin(deviceID string, id [16]byte, ack func()) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := inflightKey(deviceID, id)
	if p, ok := r.pending[k]; ok {
		p.acks = append(p.acks, ack)
		return false
	}
	r.pending[k] = &inflight{}
	return true
}

// addAck attaches ack to the in-flight id; it reports false when the id is
// not in flight (already durable, or never accepted).
func (r *inflightReplay) addAck(deviceID string, id [16]byte, ack func()) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.pending[inflightKey(deviceID, id)]
	if ok {
		p.acks = append(p.acks, ack)
	}
	return ok
}

// durable ends the in-flight state of an id and returns its acks.
func (r *inflightReplay) durable(deviceID string, id [16]byte) []func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := inflightKey(deviceID, id)
	p := r.pending[k]
	delete(r.pending, k)
	if p == nil {
		return nil
	}
	return p.acks
}
