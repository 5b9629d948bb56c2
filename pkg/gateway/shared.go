package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/storage"
)

// Forwarding from a database shared by several gateways (storage.engine
// postgres). A gateway does not forward the rows it accepted: any gateway
// claims any device's pending rows under a lease (storage.Shared.Claim),
// posts them in order through the Dispatcher, one at a time per device,
// deleting each (Finish) before posting the next, gives the lease back
// once the claimed rows are done, so that every gateway may claim the
// device's next rows, and renews its leases every Lease/4. One lease per
// device keeps one POST in flight per device fleet-wide.
//
// Fail closed: a job is posted only while its device's lease is known to
// outlast the POST (Admit: now + backend.timeout < the lease's end as
// this gateway last confirmed it), so when the database is unreachable,
// renewals fail and posting stops before another gateway can take over.
const (
	sharedRowsPerDevice = 16   // rows taken per device per claim
	sharedMaxDevices    = 1024 // devices one gateway holds at most
	sharedPoll          = time.Second
	// sharedPace is the shortest round: wake-ups (a NOTIFY per commit of
	// any gateway, a settle) arriving faster are folded into one round.
	sharedPace = 10 * time.Millisecond
)

// errLeaseUnconfirmed holds a job back: its device's lease, as this
// gateway last confirmed it, may end before the POST could.
var errLeaseUnconfirmed = errors.New("device lease not confirmed for the length of a POST (storage unreachable?): not posting")

type sharedFwd struct {
	g       *Gateway
	st      storage.Shared
	owner   string
	lease   time.Duration
	timeout time.Duration
	log     *zap.Logger

	mu      sync.Mutex
	held    map[string]*heldDev
	done    []*outbox.Record // settled rows not yet deleted
	wake    chan struct{}
	lastErr atomic.Pointer[string]
	// queued is the payload bytes of claimed rows waiting in held queues
	// (not yet in the dispatcher, which bounds its own): claims stop while
	// it is above backend.max_payload_memory.
	queued atomic.Int64

	lost atomic.Int64 // leases found taken over at renewal
}

// heldDev is a device this gateway holds the lease of. Its claimed rows
// go to the dispatcher one at a time: the next only once the previous
// one's row is deleted (Finish committed), so that a crash or a lost
// database repeats at most one POST per device (the at-least-once window).
type heldDev struct {
	queue []*outbox.Record // claimed, not yet submitted
	busy  bool             // one job in the dispatcher, or settled and not yet deleted
	cur   int64            // Seq of that job: a job of an earlier lease is not this one's
	until time.Time        // the lease's end as last confirmed (local clock)
	lost  bool
}

func newSharedFwd(g *Gateway, st storage.Shared) *sharedFwd {
	b := make([]byte, 4)
	rand.Read(b) //nolint:errcheck // never fails
	host, _ := os.Hostname()
	return &sharedFwd{g: g, st: st, lease: g.cfg.Storage.Lease, timeout: g.cfg.Backend.Timeout,
		owner: fmt.Sprintf("%s@%s/%d/%s", g.cfg.MQTT.ClientID, host, os.Getpid(), hex.EncodeToString(b)),
		log:   g.log.With(zap.String("component", "lease")), held: map[string]*heldDev{}, wake: make(chan struct{}, 1)}
}

func (s *sharedFwd) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// admit is forward.Hooks.Admit.
func (s *sharedFwd) admit(j *forward.Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.held[j.DeviceID]
	if h != nil && h.lost {
		s.drop(j.DeviceID) // its other claimed rows go with it
		return forward.ErrRelinquished
	}
	if h == nil || h.cur != j.Seq { // left over from a lease lost before
		return forward.ErrRelinquished
	}
	if !time.Now().Add(s.timeout).Before(h.until) {
		return errLeaseUnconfirmed
	}
	return nil
}

// settled records a settled (or buried) job for deletion; the device's
// next row is submitted once that deletion is committed (finish).
func (s *sharedFwd) settled(j *forward.Job) {
	s.mu.Lock()
	s.done = append(s.done, &outbox.Record{Seq: j.Seq, DeviceID: j.DeviceID})
	s.mu.Unlock()
	s.kick()
}

// submit queues claimed rows; sent is when the claim that leased them
// was sent.
func (s *sharedFwd) submit(rows []*outbox.Record, sent time.Time) {
	if len(rows) == 0 {
		return
	}
	var next []*outbox.Record
	s.mu.Lock()
	settled := make(map[int64]bool, len(s.done))
	for _, r := range s.done {
		settled[r.Seq] = true
	}
	inClaim := make(map[int64]bool, len(rows))
	for _, r := range rows {
		inClaim[r.Seq] = true
	}
	fresh := map[string]bool{} // devices whose entry this claim has renewed
	for _, r := range rows {
		h := s.held[r.DeviceID]
		if h == nil {
			h = &heldDev{}
			s.held[r.DeviceID] = h
		}
		if !fresh[r.DeviceID] {
			fresh[r.DeviceID] = true
			s.reclaimed(h, settled, inClaim)
		}
		h.until = sent.Add(s.lease)
		if (h.busy && r.Seq == h.cur) || settled[r.Seq] { // in the dispatcher, or settled and not yet deleted
			continue
		}
		h.queue = append(h.queue, r)
		s.queued.Add(int64(len(r.Payload)))
	}
	for _, h := range s.held {
		if !h.busy && !h.lost && len(h.queue) > 0 {
			next = append(next, s.pop(h))
		}
	}
	s.mu.Unlock()
	for _, r := range next {
		s.g.dispatcher.Submit(job(r))
	}
	s.g.metrics.claimed.Add(float64(len(rows)))
}

// reclaimed renews the entry of a device this claim leased (s.mu held).
// The claim returns the device's oldest rows. A device this gateway still
// holds is claimed again when its lease ran out while the database was
// unreachable (or it was lost and the other holder let go): the claimed
// rows replace the queue (appending posted every queued row twice), and
// the row of the job in the dispatcher (cur) decides what comes next:
//   - settled, not yet deleted: the next row waits for that delete;
//   - still claimed: that job is posted under the new lease, and no
//     second job of its row is submitted;
//   - gone (another gateway posted and deleted it): the job is stale,
//     and Admit relinquishes it (cur no longer names it).
func (s *sharedFwd) reclaimed(h *heldDev, settled, inClaim map[int64]bool) {
	for _, q := range h.queue {
		s.queued.Add(-int64(len(q.Payload)))
	}
	h.queue, h.lost = nil, false
	if h.busy && !settled[h.cur] && !inClaim[h.cur] {
		h.busy, h.cur = false, 0
	}
}

// drop forgets a device and its queued rows (s.mu held).
func (s *sharedFwd) drop(id string) {
	if h := s.held[id]; h != nil {
		for _, r := range h.queue {
			s.queued.Add(-int64(len(r.Payload)))
		}
		delete(s.held, id)
	}
}

func (s *sharedFwd) pop(h *heldDev) *outbox.Record {
	r := h.queue[0]
	s.queued.Add(-int64(len(r.Payload)))
	h.cur = r.Seq
	h.queue[0] = nil
	h.queue = h.queue[1:]
	h.busy = true
	return r
}

func (s *sharedFwd) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

func (s *sharedFwd) fail(op string, err error) {
	msg := op + ": " + err.Error()
	if s.lastErr.Swap(&msg) == nil {
		s.log.Error("STORAGE UNREACHABLE: not forwarding until it answers (rows stay stored)", zap.String("op", op), zap.Error(err))
	}
	s.g.metrics.infraErrors.WithLabelValues("storage_" + op).Inc()
}

func (s *sharedFwd) ok() {
	if s.lastErr.Swap(nil) != nil {
		s.log.Info("storage answers again; forwarding resumed")
	}
}

// run claims, finishes and renews until ctx ends.
func (s *sharedFwd) run(ctx context.Context) {
	poll := time.NewTicker(sharedPoll)
	defer poll.Stop()
	renew := time.NewTicker(s.lease / 4)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-poll.C:
		case <-renew.C:
			s.renew(ctx)
		}
		s.finish(ctx)
		s.claim(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(sharedPace):
		}
	}
}

func (s *sharedFwd) finish(ctx context.Context) {
	s.mu.Lock()
	done := s.done
	s.done = nil
	var drained []string // devices with nothing left to post: their leases go back
	for _, r := range done {
		if h := s.held[r.DeviceID]; h != nil && h.cur == r.Seq && len(h.queue) == 0 { // not a job of an earlier lease
			drained = append(drained, r.DeviceID)
		}
	}
	s.mu.Unlock()
	if len(done) == 0 {
		return
	}
	err := s.st.Finish(ctx, s.owner, done, drained) // drained devices go back to every gateway
	if err != nil {
		s.mu.Lock() // keep them for the next round
		s.done = append(done, s.done...)
		s.mu.Unlock()
		if ctx.Err() == nil {
			s.fail("finish", err)
		}
		return
	}
	s.ok()
	var next []*outbox.Record
	s.mu.Lock()
	for _, id := range drained {
		delete(s.held, id)
	}
	for _, r := range done {
		h := s.held[r.DeviceID]
		if h == nil || h.cur != r.Seq { // not this lease's job
			continue
		}
		if h.lost {
			s.drop(r.DeviceID)
			continue
		}
		h.busy = false
		if !h.lost && len(h.queue) > 0 {
			next = append(next, s.pop(h))
		}
	}
	s.mu.Unlock()
	for _, r := range next {
		s.g.dispatcher.Submit(job(r))
	}
}

func (s *sharedFwd) claim(ctx context.Context) {
	free := sharedMaxDevices - s.heldCount()
	if free <= 0 || s.queued.Load() >= s.g.cfg.Backend.MaxPayloadMemory || s.g.stopping.Load() || s.g.dispatcher.BreakerOpen() {
		return
	}
	sent := time.Now()
	rows, err := s.st.Claim(ctx, s.owner, free, sharedRowsPerDevice, s.lease)
	if err != nil {
		if ctx.Err() == nil {
			s.fail("claim", err)
		}
		return
	}
	s.ok()
	s.submit(rows, sent)
}

func (s *sharedFwd) renew(ctx context.Context) {
	s.mu.Lock()
	devs := make([]string, 0, len(s.held))
	for id, h := range s.held {
		if !h.lost {
			devs = append(devs, id)
		}
	}
	s.mu.Unlock()
	if len(devs) == 0 {
		return
	}
	sort.Strings(devs)
	sent := time.Now()
	kept, err := s.st.Renew(ctx, s.owner, devs, s.lease)
	if err != nil {
		if ctx.Err() == nil {
			s.fail("renew", err)
		}
		return
	}
	s.ok()
	k := make(map[string]bool, len(kept))
	for _, id := range kept {
		k[id] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range devs {
		h := s.held[id]
		switch {
		case h == nil:
		case k[id]:
			h.until = sent.Add(s.lease)
		default:
			h.lost = true
			if !h.busy { // nothing of it in the dispatcher
				s.drop(id)
			}
			s.lost.Add(1)
			s.log.Warn("lease taken over by another gateway; dropping this device's claimed rows", zap.String("device_id", id))
		}
	}
}

// stop deletes what settled and gives up every lease, once the dispatcher
// has stopped, so other gateways take the rest over at once.
func (s *sharedFwd) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.mu.Lock()
	done := s.done
	s.done = nil
	s.mu.Unlock()
	if err := s.st.Finish(ctx, s.owner, done, nil); err != nil {
		s.log.Warn("cannot delete settled rows at shutdown; the gateway that takes their devices over posts them again", zap.Int("rows", len(done)), zap.Error(err))
	}
	if err := s.st.Release(ctx, s.owner); err != nil {
		s.log.Warn("cannot release leases at shutdown; other gateways take them over when they expire", zap.Error(err))
	}
}
