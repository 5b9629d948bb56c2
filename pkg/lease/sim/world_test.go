package sim

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/lease/memstore"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// world is one seed's run: the model database, the gateway slots, the
// broker's deliveries and the backend, with the invariants' bookkeeping.
type world struct {
	p     *plan
	db    *memstore.DB
	start time.Time
	ctx   context.Context

	slots []*slot

	mu         sync.Mutex
	quiet      bool // faults off: the run is draining
	violations []string
	calls      map[string]int // database calls so far per connection and op
	acked      map[*delivery]bool
	committed  map[string]int // message → rows the database inserted for it
	inflight   map[string]int // device → POSTs in flight, fleet-wide
	lastOrder  map[string]int64
	posted     map[string]int   // message → POSTs
	processed  map[string]int   // message → times the backend took it (2xx, final 4xx)
	dups       map[string]int   // device → messages the backend took again
	lostFor    map[string]int   // message → answers lost after the backend took it, not yet used by a duplicate
	takenAt    map[string]int64 // message → the epoch it was last taken under
	dupIn      map[string]bool  // "device@epoch" → a duplicate after that takeover happened
	attempts   map[string]int
	events     []string // the last events, printed with a failure
}

func newWorld(ctx context.Context, p *plan) *world {
	w := &world{p: p, start: time.Now(), ctx: ctx, calls: map[string]int{}, acked: map[*delivery]bool{},
		committed: map[string]int{}, inflight: map[string]int{}, lastOrder: map[string]int64{}, posted: map[string]int{},
		processed: map[string]int{}, dups: map[string]int{}, lostFor: map[string]int{}, takenAt: map[string]int64{}, dupIn: map[string]bool{}, attempts: map[string]int{}}
	w.db = memstore.New(memstore.Config{Quota: p.quota, Window: p.window, OnCommit: w.onCommit})
	w.db.SetInjector(w.fault)
	return w
}

func (w *world) since() time.Duration { return time.Since(w.start) }

// violate records a broken invariant (w.mu held).
func (w *world) violate(format string, args ...any) {
	w.violations = append(w.violations, fmt.Sprintf("t=%v ", w.since())+fmt.Sprintf(format, args...))
}

// event remembers the last events for a failure's report (w.mu held).
func (w *world) event(format string, args ...any) {
	if len(w.events) >= 400 {
		w.events = w.events[1:]
	}
	w.events = append(w.events, fmt.Sprintf("t=%v ", w.since())+fmt.Sprintf(format, args...))
}

func (w *world) failed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.violations) > 0
}

func (w *world) report() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.violations, "\n") + "\nlast events:\n  " + strings.Join(w.events, "\n  ")
}

// onCommit is the model's record of every row it inserted: invariant "no
// message is accepted twice".
func (w *world) onCommit(r outbox.Record) {
	k := r.DeviceID + "/" + r.MessageID
	w.mu.Lock()
	defer w.mu.Unlock()
	w.committed[k]++
	w.event("commit %s seq=%d dseq=%d", k, r.Seq, r.DSeq)
	if w.committed[k] > 1 {
		w.violate("message %s accepted (committed) %d times", k, w.committed[k])
	}
}

// fault is the model's injector: the seed's outages by time, and per-call
// faults hashed from the call's identity.
func (w *world) fault(conn string, op memstore.Op) memstore.Fault {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.quiet {
		return memstore.Fault{}
	}
	var gi int
	fmt.Sscanf(conn, "g%d.", &gi) //nolint:errcheck // our own names
	now := w.since()
	for _, o := range w.p.outages {
		if o.gw == gi && now >= o.from && now < o.to {
			if o.freeze {
				return memstore.Fault{Stall: o.to - now}
			}
			return memstore.Fault{Fail: true}
		}
	}
	k := conn + "/" + string(op)
	n := w.calls[k]
	w.calls[k]++
	x := w.p.hash("db", conn, op, n)
	f := w.callFault(conn, op, n, x)
	if f != (memstore.Fault{}) {
		w.event("db %s %s: %+v", conn, op, f)
	}
	return f
}

func (w *world) callFault(conn string, op memstore.Op, n int, x float64) memstore.Fault {
	switch {
	case x < w.p.pFail:
		return memstore.Fault{Fail: true}
	case x < w.p.pFail+w.p.pLose && (op == memstore.OpCommit || op == memstore.OpFinish || op == memstore.OpClaim):
		return memstore.Fault{LoseAnswer: true}
	case x > 1-w.p.pStall:
		return memstore.Fault{Stall: time.Duration(w.p.hash("stall", conn, op, n) * float64(2*w.p.timeout))}
	}
	return memstore.Fault{}
}

// backend is the simulated HTTP backend as one gateway reaches it (a
// forward.Poster). It checks the invariants at the moment of each POST.
type backend struct {
	w     *world
	owner string
}

// begin is a POST (or one item of a batch) reaching the backend: the
// invariants that hold at that moment are checked, and it counts as in
// flight until end. It returns the message key and how many POSTs of it
// came before.
func (b *backend) begin(j *forward.Job) (k string, n int, quiet bool) {
	w := b.w
	k = j.DeviceID + "/" + j.MessageID
	owner, epoch := w.db.LeaseOf(j.DeviceID)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.event("POST %s order=%d by %s epoch=%d (store: %q epoch %d)", k, j.Order, b.owner, j.Epoch, owner, epoch)
	if w.inflight[j.DeviceID] > 0 {
		w.violate("two POSTs of device %s in flight fleet-wide (the second: %s by %s)", j.DeviceID, k, b.owner)
	}
	w.inflight[j.DeviceID]++
	if owner != b.owner || epoch != j.Epoch {
		w.violate("%s posted %s (epoch %d) without the device's current lease (the store says owner %q, epoch %d)", b.owner, k, j.Epoch, owner, epoch)
	}
	if j.Order < w.lastOrder[j.DeviceID] {
		w.violate("X-Iotgw-Seq of %s went back: %d after %d (%s)", j.DeviceID, j.Order, w.lastOrder[j.DeviceID], k)
	}
	w.lastOrder[j.DeviceID] = max(w.lastOrder[j.DeviceID], j.Order)
	w.posted[k]++
	n = w.attempts[k]
	w.attempts[k]++
	return k, n, w.quiet
}

func (b *backend) end(j *forward.Job) {
	b.w.mu.Lock()
	b.w.inflight[j.DeviceID]--
	b.w.mu.Unlock()
}

// lost records that the answer to the taken messages of jobs was lost.
func (w *world) lost(jobs []*forward.Job, taken []bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, j := range jobs {
		if taken[i] {
			w.lostFor[j.DeviceID+"/"+j.MessageID]++
			w.event("answer to %s/%s lost (timeout)", j.DeviceID, j.MessageID)
		}
	}
}

// answer is how the backend answers one attempt while faults are on:
// status 200, 422 (final) or 503, after taking the message at take and
// answering at answer (from the start); hang: never.
func (w *world) answer(x, delay float64) (status int, take, answer time.Duration, hang bool) {
	d := func(f float64) time.Duration { return time.Duration(delay * f * float64(w.p.timeout)) }
	status, take, answer = 200, d(0.3), d(0.3)
	switch p := w.p; {
	case x < p.p4xx:
		status = 422
	case x < p.p4xx+p.p5xx:
		status = 503
	case x < p.p4xx+p.p5xx+p.pSlow:
		take, answer = d(0.8), d(1.6)
	case x < p.p4xx+p.p5xx+p.pSlow+p.pHang:
		hang = true
	}
	return status, take, answer, hang
}

// Post is one POST. Like forward.Client, it sends nothing once its
// deadline passed and gives up after the backend timeout; a 2xx or final
// 4xx is taken (processed) before it is answered, so an answer that
// arrives too late is a lost answer and the retry a duplicate the
// at-least-once window allows.
func (b *backend) Post(ctx context.Context, j *forward.Job) (forward.Response, error) {
	w := b.w
	if err := ctx.Err(); err != nil { // past its deadline already: nothing is sent
		return forward.Response{}, &forward.RetryableError{Err: err}
	}
	k, n, quiet := b.begin(j)
	defer b.end(j)
	ctx, cancel := context.WithTimeout(ctx, w.p.timeout)
	defer cancel()
	status, takeAfter, answerAfter, hang := 200, time.Duration(0), time.Duration(0), false
	if !quiet {
		status, takeAfter, answerAfter, hang = w.answer(w.p.hash("post", k, n), w.p.hash("delay", k, n))
	}
	if hang || !sleep(ctx, takeAfter) {
		<-ctx.Done()
		return forward.Response{}, &forward.RetryableError{Err: ctx.Err()}
	}
	if status == 503 {
		return forward.Response{Status: status}, &forward.RetryableError{Status: status}
	}
	w.take(j, k)
	if !sleep(ctx, answerAfter-takeAfter) {
		w.lost([]*forward.Job{j}, []bool{true})
		return forward.Response{}, &forward.RetryableError{Err: ctx.Err()}
	}
	return forward.Response{Status: status, Body: []byte(`{"ok":true}`)}, nil
}

// PostBatch is one batch POST (backend.batch_max > 1), answered as a
// whole (503, no answer, slowly, or a final 422 for the whole batch, which
// the dispatcher posts again item by item) or item by item (200, 422 or
// 503 each).
func (b *backend) PostBatch(ctx context.Context, jobs []*forward.Job) ([]forward.Response, error) {
	w := b.w
	if err := ctx.Err(); err != nil {
		return nil, &forward.RetryableError{Err: err}
	}
	keys := make([]string, len(jobs))
	var id strings.Builder
	quiet := false
	for i, j := range jobs {
		k, n, q := b.begin(j)
		keys[i], quiet = k, q
		fmt.Fprintf(&id, "%s#%d ", k, n)
	}
	defer func() {
		for _, j := range jobs {
			b.end(j)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, w.p.timeout)
	defer cancel()
	status, takeAfter, answerAfter, hang := 200, time.Duration(0), time.Duration(0), false
	if !quiet {
		status, takeAfter, answerAfter, hang = w.answer(w.p.hash("batch", id.String()), w.p.hash("delay", id.String()))
	}
	if hang || !sleep(ctx, takeAfter) {
		<-ctx.Done()
		return nil, &forward.RetryableError{Err: ctx.Err()}
	}
	switch status {
	case 503:
		return nil, &forward.RetryableError{Status: status}
	case 422:
		if len(jobs) == 1 { // a batch of one: its answer is the item's, and it is taken
			w.take(jobs[0], keys[0])
		}
		return nil, &forward.BatchRefusedError{Status: status, Body: []byte(`{"error":"refused"}`)}
	}
	resps := make([]forward.Response, len(jobs))
	taken := make([]bool, len(jobs))
	for i, j := range jobs {
		resps[i] = forward.Response{Status: 200, Body: []byte(`{"ok":true}`)}
		if !quiet {
			if y := w.p.hash("item", id.String(), i); y < w.p.p5xx {
				resps[i].Status = 503
			} else if y < w.p.p5xx+w.p.p4xx {
				resps[i].Status = 422
			}
		}
		if resps[i].Status != 503 {
			w.take(j, keys[i])
			taken[i] = true
		}
	}
	if !sleep(ctx, answerAfter-takeAfter) {
		w.lost(jobs, taken)
		return nil, &forward.RetryableError{Err: ctx.Err()}
	}
	return resps, nil
}

// take records that the backend processed j: invariant "duplicates stay
// within the at-least-once window". A message taken again is allowed
// once for each answer to it that was lost (the backend took it, the
// gateway gave up first), or else once per device per takeover: under a
// lease (epoch) other than the one it was last taken under, and only one
// such duplicate per device and epoch.
func (w *world) take(j *forward.Job, k string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.processed[k]++
	last, seen := w.takenAt[k]
	w.takenAt[k] = j.Epoch
	if !seen {
		return
	}
	w.dups[j.DeviceID]++
	de := fmt.Sprintf("%s@%d", j.DeviceID, j.Epoch)
	switch {
	case w.lostFor[k] > 0:
		w.lostFor[k]--
		w.event("duplicate %s after a lost answer", k)
	case j.Epoch != last && !w.dupIn[de]:
		w.dupIn[de] = true
		w.event("duplicate %s after a takeover (epoch %d, last taken at %d)", k, j.Epoch, last)
	default:
		w.violate("%s taken again by the backend (epoch %d, last taken at epoch %d) with no lost answer and no takeover to allow it (device %s has %d duplicates)",
			k, j.Epoch, last, j.DeviceID, w.dups[j.DeviceID])
	}
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// slot is one gateway's place in the fleet (its MQTT session): the
// incarnation running now, nil while it is down.
type slot struct {
	mu      sync.Mutex
	cur     *gateway
	changed chan struct{}
}

func (s *slot) get(ctx context.Context) *gateway {
	for {
		s.mu.Lock()
		g, ch := s.cur, s.changed
		s.mu.Unlock()
		if g != nil {
			return g
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
	}
}

func (s *slot) set(g *gateway) {
	s.mu.Lock()
	s.cur = g
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// deliver is the broker for one delivery: at its time it hands the
// message to its gateway slot's current incarnation and waits for the
// ack; a gateway that dies before acking gets it again when its slot
// comes back (a persistent session's redelivery on reconnect).
func (w *world) deliver(d *delivery) {
	if !sleep(w.ctx, d.at) {
		return
	}
	for {
		g := w.slots[d.gw].get(w.ctx)
		if g == nil {
			return
		}
		in := &inbound{d: d, ack: make(chan struct{})}
		select {
		case g.inbox <- in:
		case <-g.ctx.Done():
			continue
		case <-w.ctx.Done():
			return
		}
		select {
		case <-in.ack:
			w.mu.Lock()
			w.acked[d] = true
			w.mu.Unlock()
			return
		case <-g.ctx.Done(): // crashed before the ack: redelivered to the next one
		case <-w.ctx.Done():
			return
		}
	}
}

type inbound struct {
	d   *delivery
	ack chan struct{}
}

func (w *world) kickAll() {
	for _, s := range w.slots {
		s.mu.Lock()
		g := s.cur
		s.mu.Unlock()
		if g != nil {
			g.kick()
		}
	}
}
