package gateway

import (
	"context"

	"github.com/iotgw/iotgw/pkg/outbox"
)

// Admission: what a validated message holds between its validation and
// its commit, and how it gives it back. The one place for the in-flight
// acks, the per-device quota and the replay id of a message on its way
// into the outbox:
//   - hold, from handle: a quota slot of its device, and its ack waits
//     for the commit (copies arriving meanwhile wait on it too);
//   - committedAcks, once the commit is durable: the acks to send;
//   - undo, when it will not be committed (quota, refused by the database,
//     shutting down before the append), with what to give back.

// hold takes rec's device's quota slot and attaches ack to rec's id, which
// the validator recorded as in flight. It reports false, holding nothing
// new, when the device is at outbox.max_pending_per_device.
func (g *Gateway) hold(rec *outbox.Record, ack func()) bool {
	if !g.pendingQ.take(rec.DeviceID) {
		return false
	}
	if !g.inflight.addAck(rec.DeviceID, rec.ID, ack) {
		ack() // cannot happen: the validator's Record marked it in flight
	}
	return true
}

// committedAcks returns the acks waiting for rec's commit (its own and
// those of copies that arrived meanwhile); rec is no longer in flight.
func (g *Gateway) committedAcks(rec *outbox.Record) []func() {
	return g.inflight.durable(rec.DeviceID, rec.ID)
}

// undoWhat says what undo gives back besides the in-flight mark.
type undoWhat int

const (
	// undoForget forgets the replay id, so that a resend is accepted
	// (the message was never stored and is not a replay).
	undoForget undoWhat = 1 << iota
	// undoSlot frees the device's quota slot (hold took it).
	undoSlot
)

// undo takes back a validated message that will not be committed: it is
// no longer in flight, and how says what else goes back. It returns the
// acks that were waiting on it, for the caller to send with its answer,
// or to drop when the message must stay unacked (redelivered later).
func (g *Gateway) undo(rec *outbox.Record, how undoWhat) []func() {
	acks := g.inflight.durable(rec.DeviceID, rec.ID)
	if how&undoForget != 0 {
		g.replay.Forget(context.Background(), rec.DeviceID, rec.ID) //nolint:errcheck // memory store cannot fail
	}
	if how&undoSlot != 0 {
		g.pendingQ.release(rec.DeviceID)
	}
	return acks
}

// ackAll returns one ack that sends first (if set) and then every ack of
// rest.
func ackAll(first func(), rest []func()) func() {
	return func() {
		if first != nil {
			first()
		}
		for _, ack := range rest {
			ack()
		}
	}
}
