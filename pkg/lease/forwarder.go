package lease

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/internal/tick"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// Config is how the Forwarder claims and holds leases.
type Config struct {
	// Lease is how long a claim or renewal holds a device (storage.lease).
	Lease time.Duration
	// Timeout is the longest POST (backend.timeout): a job is admitted only
	// while its lease outlasts one.
	Timeout time.Duration
	// MaxPayloadMemory bounds the payload bytes of claimed rows waiting
	// here for the dispatcher; past it rows wait without their payload,
	// which the dispatcher reads back when it posts them. 0: never keep one.
	MaxPayloadMemory int64
	// Devices is the most devices held at once (default 1024) and
	// RowsPerDevice the most rows claimed per device (default 16).
	Devices, RowsPerDevice int
	// Poll is the longest wait between claims without a Kick (default 1s);
	// Pace the shortest (0: none): wake-ups arriving faster are folded, so
	// that a store with a round trip per call is not called per wake-up.
	Poll, Pace time.Duration
}

func (c *Config) defaults() {
	if c.Devices <= 0 {
		c.Devices = 1024
	}
	if c.RowsPerDevice <= 0 {
		c.RowsPerDevice = 16
	}
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
}

// Hooks connect the Forwarder to the rest of the gateway.
type Hooks struct {
	// Submit hands a job to the dispatcher (required); it must not block.
	Submit func(j *forward.Job)
	// Paused, when set and true, holds claims back (the backend's breaker
	// is open, or the gateway is stopping).
	Paused func() bool
	// Claimed counts claimed rows; Failed each failed store call, by
	// operation (claim, renew, finish); Stale each settled row or drained
	// lease that Finish refused because the lease had moved on.
	Claimed func(n int)
	Failed  func(op string, err error)
	Stale   func(n int)
}

// ErrLeaseUnconfirmed holds a job back: its device's lease, as this
// gateway last confirmed it, may end before a POST could.
var ErrLeaseUnconfirmed = errors.New("device lease not confirmed for the length of a POST (storage unreachable?): not posting")

// Forwarder forwards the rows of a Store whose rows are claimed under
// per-device leases. It claims devices, submits their rows to the
// dispatcher one at a time per device (the next only once the last one's
// Finish committed, so a crash or a lost database repeats at most one POST
// per device), gives a lease back once its rows are done so any gateway
// may claim the device's next rows, and renews its leases every Lease/4.
//
// Fencing: every lease has an epoch. A job is admitted (Admit) right
// before its POST only while this gateway holds its device's lease and
// knows it to outlast the POST, and is then posted under that lease's
// epoch; Finish, burial and release are applied by the store only under
// the epoch this gateway holds. A gateway that lost a lease (paused,
// partitioned) can therefore post nothing after another claimed the
// device, and change nothing in the store.
type Forwarder struct {
	st    Store
	owner string
	cfg   Config
	now   func() time.Time
	log   *zap.Logger
	hooks Hooks

	mu      sync.Mutex
	held    map[string]*heldDev
	done    []Done // settled rows not yet finished
	queued  int64  // payload bytes of rows in held queues
	wake    chan struct{}
	lastErr atomic.Pointer[string]
	lost    atomic.Int64 // leases found taken over at renewal
}

// heldDev is a device this gateway holds the lease of.
type heldDev struct {
	epoch int64            // the lease's epoch
	until time.Time        // the lease's end as last confirmed (local clock)
	queue []*outbox.Record // claimed, not yet submitted
	busy  bool             // one job in the dispatcher, or settled and not yet finished
	cur   int64            // Seq of that job: a job of another row is not this lease's
	lost  bool
}

// New returns a Forwarder claiming as owner, which must be unique to this
// process run (a restarted gateway is a new owner). now must carry a
// monotonic reading (time.Now): lease ends are measured with it.
func New(st Store, owner string, cfg Config, now func() time.Time, log *zap.Logger, hooks Hooks) *Forwarder {
	cfg.defaults()
	return &Forwarder{st: st, owner: owner, cfg: cfg, now: now, log: log, hooks: hooks,
		held: map[string]*heldDev{}, wake: make(chan struct{}, 1)}
}

// Job returns the dispatcher's job for row r, claimed under epoch (0 for
// a row not leased).
func Job(r *outbox.Record, epoch int64) *forward.Job {
	j := &forward.Job{Seq: r.Seq, Order: r.DSeq, Epoch: epoch, DeviceID: r.DeviceID, MessageID: r.MessageID,
		Timestamp: r.Timestamp, Payload: r.Payload, ReceivedAt: r.ReceivedAt}
	if c, ok := strings.CutPrefix(r.Timestamp, outbox.CounterMark); ok {
		j.Timestamp, j.Counter = "", c
	}
	return j
}

// Owner returns the owner name this Forwarder claims as.
func (f *Forwarder) Owner() string { return f.owner }

// Kick makes Run claim and finish now (new rows, a settled job).
func (f *Forwarder) Kick() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Admit is forward.Hooks.Admit: it is called right before each POST, after
// the payload is loaded. It returns the end of the lease the POST runs
// under, ErrLeaseUnconfirmed while that lease may end before the POST
// could, or forward.ErrRelinquished for a job that is no longer this
// gateway's. An admitted job carries the current epoch from then on.
func (f *Forwarder) Admit(j *forward.Job) (time.Time, error) {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.held[j.DeviceID]
	if h != nil && h.lost {
		f.drop(j.DeviceID) // its other claimed rows go with it
		return time.Time{}, forward.ErrRelinquished
	}
	if h == nil || h.cur != j.Seq { // left over from a lease lost before
		return time.Time{}, forward.ErrRelinquished
	}
	if !now.Add(f.cfg.Timeout).Before(h.until) {
		return time.Time{}, ErrLeaseUnconfirmed
	}
	j.Epoch = h.epoch
	return h.until, nil
}

// Settled records a settled job for Finish: deleted, or buried when dead
// is set. The device's next row is submitted once Finish committed.
func (f *Forwarder) Settled(j *forward.Job, dead *Dead) {
	f.mu.Lock()
	f.done = append(f.done, Done{Lease: Lease{Device: j.DeviceID, Epoch: j.Epoch}, Seq: j.Seq, Dead: dead})
	f.mu.Unlock()
	f.Kick()
}

// Held returns how many devices this gateway holds.
func (f *Forwarder) Held() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.held)
}

// Lost returns how many leases were found taken over at renewal.
func (f *Forwarder) Lost() int64 { return f.lost.Load() }

// LastError returns the failing store operation and its error, or "" while
// the store answers.
func (f *Forwarder) LastError() string {
	if p := f.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

// Run claims, finishes and renews until ctx ends.
func (f *Forwarder) Run(ctx context.Context) {
	poll, stopPoll := tick.Aligned(f.cfg.Poll)
	defer stopPoll()
	renew, stopRenew := tick.Aligned(f.cfg.Lease / 4)
	defer stopRenew()
	pace := time.NewTimer(0)
	defer pace.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		case <-poll.C:
		case <-renew.C:
			f.renew(ctx) //nolint:errcheck // reported by fail; the next round retries
		}
		f.finish(ctx)
		f.claim(ctx)
		if f.cfg.Pace <= 0 {
			continue
		}
		pace.Reset(f.cfg.Pace)
		select {
		case <-ctx.Done():
			return
		case <-pace.C:
		}
	}
}

// Stop finishes what settled and gives every lease back, once the
// dispatcher has stopped, so that other gateways take the rest over at
// once.
func (f *Forwarder) Stop(ctx context.Context) {
	f.mu.Lock()
	done := f.current(f.done)
	f.done = nil
	f.mu.Unlock()
	if len(done) > 0 {
		if _, err := f.st.Finish(ctx, f.owner, done, nil); err != nil {
			f.log.Warn("cannot delete settled rows at shutdown; the gateway that takes their devices over posts them again", zap.Int("rows", len(done)), zap.Error(err))
		}
	}
	if err := f.st.Release(ctx, f.owner); err != nil {
		f.log.Warn("cannot release leases at shutdown; other gateways take them over when they expire", zap.Error(err))
	}
}

// current moves each of done whose device this gateway holds now to that
// lease's epoch (f.mu held): a row settled (delivered, or dead) under an
// earlier lease is finished under the one held now. The others keep
// theirs, and the store refuses them as stale.
func (f *Forwarder) current(done []Done) []Done {
	for i := range done {
		if h := f.held[done[i].Device]; h != nil && !h.lost {
			done[i].Epoch = h.epoch
		}
	}
	return done
}

func (f *Forwarder) fail(op string, err error) {
	msg := op + ": " + err.Error()
	if f.lastErr.Swap(&msg) == nil {
		f.log.Error("STORAGE UNREACHABLE: not forwarding until it answers (rows stay stored)", zap.String("op", op), zap.Error(err))
	}
	if f.hooks.Failed != nil {
		f.hooks.Failed(op, err)
	}
}

func (f *Forwarder) ok() {
	if f.lastErr.Swap(nil) != nil {
		f.log.Info("storage answers again; forwarding resumed")
	}
}

func (f *Forwarder) finish(ctx context.Context) {
	f.mu.Lock()
	done := f.current(f.done)
	f.done = nil
	var drained []Lease // devices with nothing left to post: their leases go back
	for _, d := range done {
		if h := f.held[d.Device]; h != nil && !h.lost && d.Epoch == h.epoch && h.cur == d.Seq && len(h.queue) == 0 {
			drained = append(drained, Lease{Device: d.Device, Epoch: h.epoch})
		}
	}
	f.mu.Unlock()
	if len(done) == 0 {
		return
	}
	stale, err := f.st.Finish(ctx, f.owner, done, drained)
	if err != nil {
		f.mu.Lock() // keep them for the next round
		f.done = append(done, f.done...)
		f.mu.Unlock()
		if ctx.Err() == nil {
			f.fail("finish", err)
		}
		return
	}
	f.ok()
	// Some of done were refused (the store does not say which): renew to
	// learn which leases moved on. A device still held at its epoch had
	// its rows finished (epochs only rise); one found lost may have its
	// row left, so it is dropped and the next claim decides. If the store
	// cannot be asked, every device of done is dropped.
	unsure := false
	if stale > 0 {
		if f.hooks.Stale != nil {
			f.hooks.Stale(stale)
		}
		unsure = f.renew(ctx) != nil
	}
	var next []*forward.Job
	f.mu.Lock()
	for _, l := range drained {
		if h := f.held[l.Device]; h != nil && h.epoch == l.Epoch {
			delete(f.held, l.Device)
		}
	}
	for _, d := range done {
		h := f.held[d.Device]
		if h == nil || h.cur != d.Seq || d.Epoch != h.epoch { // not this lease's job
			continue
		}
		if h.lost || unsure { // the lease moved on: its row may be left
			f.drop(d.Device)
			continue
		}
		h.busy = false
		if len(h.queue) > 0 {
			next = append(next, f.pop(h))
		}
	}
	f.mu.Unlock()
	for _, j := range next {
		f.hooks.Submit(j)
	}
}

func (f *Forwarder) claim(ctx context.Context) {
	free := f.cfg.Devices - f.Held()
	if free <= 0 || (f.hooks.Paused != nil && f.hooks.Paused()) {
		return
	}
	sent := f.now()
	claims, err := f.st.Claim(ctx, f.owner, free, f.cfg.RowsPerDevice, f.cfg.Lease)
	if err != nil {
		if ctx.Err() == nil {
			f.fail("claim", err)
		}
		return
	}
	f.ok()
	f.submit(claims, sent)
}

// submit takes claimed devices in; sent is when the claim was sent.
func (f *Forwarder) submit(claims []Claim, sent time.Time) {
	if len(claims) == 0 {
		return
	}
	n := 0
	var next []*forward.Job
	f.mu.Lock()
	for _, c := range claims {
		n += len(c.Rows)
		h := f.held[c.Device]
		if h == nil {
			h = &heldDev{epoch: c.Epoch}
			f.held[c.Device] = h
		} else {
			f.reclaimed(h, c)
		}
		h.until = sent.Add(f.cfg.Lease)
		pendingDelete := map[int64]bool{}
		for _, d := range f.done {
			if d.Device == c.Device {
				pendingDelete[d.Seq] = true
			}
		}
		for _, r := range c.Rows {
			if (h.busy && r.Seq == h.cur) || pendingDelete[r.Seq] { // in the dispatcher, or settled and not yet deleted
				continue
			}
			if r.Payload != nil {
				if f.queued+int64(len(r.Payload)) > f.cfg.MaxPayloadMemory {
					r.Payload = nil // the dispatcher reads it back when it posts it
				} else {
					f.queued += int64(len(r.Payload))
				}
			}
			h.queue = append(h.queue, r)
		}
		if !h.busy && len(h.queue) > 0 {
			next = append(next, f.pop(h))
		}
	}
	f.mu.Unlock()
	for _, j := range next {
		f.hooks.Submit(j)
	}
	if f.hooks.Claimed != nil {
		f.hooks.Claimed(n)
	}
}

// reclaimed takes in a new claim c of a device this gateway still holds
// (f.mu held): its lease ran out while the store was unreachable, or it
// was lost and freed since. The claim returns the device's oldest rows, so
// they replace the queue (appending posted every queued row twice), and
// the row of the job in the dispatcher (cur) decides what comes next:
//   - settled, not yet finished: the next row waits for that Finish, which
//     runs under the new epoch;
//   - still claimed: that job is posted under the new lease (Admit moves
//     it to the new epoch), and no second job of its row is submitted;
//   - gone (another gateway posted and deleted it): the job is stale, and
//     Admit relinquishes it (cur no longer names it).
func (f *Forwarder) reclaimed(h *heldDev, c Claim) {
	for _, q := range h.queue {
		f.queued -= int64(len(q.Payload))
	}
	h.queue, h.lost, h.epoch = nil, false, c.Epoch
	if !h.busy {
		return
	}
	for _, r := range c.Rows {
		if r.Seq == h.cur {
			return
		}
	}
	for _, d := range f.done {
		if d.Device == c.Device && d.Seq == h.cur {
			return
		}
	}
	h.busy, h.cur = false, 0
}

// drop forgets a device and its queued rows (f.mu held).
func (f *Forwarder) drop(id string) {
	if h := f.held[id]; h != nil {
		for _, r := range h.queue {
			f.queued -= int64(len(r.Payload))
		}
		delete(f.held, id)
	}
}

// pop moves h's next row into the dispatcher (f.mu held).
func (f *Forwarder) pop(h *heldDev) *forward.Job {
	r := h.queue[0]
	f.queued -= int64(len(r.Payload))
	h.cur = r.Seq
	h.queue[0] = nil
	h.queue = h.queue[1:]
	h.busy = true
	return Job(r, h.epoch)
}

// renew extends every lease held and marks those found taken over; it
// returns the store's error, if any.
func (f *Forwarder) renew(ctx context.Context) error {
	f.mu.Lock()
	leases := make([]Lease, 0, len(f.held))
	for id, h := range f.held {
		if !h.lost {
			leases = append(leases, Lease{Device: id, Epoch: h.epoch})
		}
	}
	f.mu.Unlock()
	if len(leases) == 0 {
		return nil
	}
	sort.Slice(leases, func(a, b int) bool { return leases[a].Device < leases[b].Device })
	sent := f.now()
	kept, err := f.st.Renew(ctx, f.owner, leases, f.cfg.Lease)
	if err != nil {
		if ctx.Err() == nil {
			f.fail("renew", err)
		}
		return err
	}
	f.ok()
	k := make(map[Lease]bool, len(kept))
	for _, l := range kept {
		k[l] = true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range leases {
		h := f.held[l.Device]
		switch {
		case h == nil || h.epoch != l.Epoch: // claimed again meanwhile
		case k[l]:
			h.until = sent.Add(f.cfg.Lease)
		default:
			h.lost = true
			if !h.busy { // nothing of it in the dispatcher
				f.drop(l.Device)
			}
			f.lost.Add(1)
			f.log.Warn("lease taken over by another gateway; dropping this device's claimed rows", zap.String("device_id", l.Device))
		}
	}
	return nil
}
