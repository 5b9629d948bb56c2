package lease

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// fakeStore scripts the database side of the Forwarder (a unit-test fake:
// leasetest runs the contract against the real engines, and the
// simulation drives the Forwarder against a model of the database).
type fakeStore struct {
	claims   [][]*outbox.Record // rows returned by successive Claim calls
	epochs   map[string]int64   // each device's epoch: raised by every claim
	kept     []string           // Renew's answer: these devices' leases are kept
	finished [][]Done           // done of each Finish call
	drained  [][]Lease          // drained of each Finish call
	down     bool               // Finish fails (the database is unreachable)
}

func (f *fakeStore) Claim(context.Context, string, int, int, time.Duration) ([]Claim, error) {
	if len(f.claims) == 0 {
		return nil, nil
	}
	c := f.claims[0]
	f.claims = f.claims[1:]
	if f.epochs == nil {
		f.epochs = map[string]int64{}
	}
	var out []Claim
	for _, r := range c {
		if len(out) == 0 || out[len(out)-1].Device != r.DeviceID {
			f.epochs[r.DeviceID]++
			out = append(out, Claim{Lease: Lease{Device: r.DeviceID, Epoch: f.epochs[r.DeviceID]}})
		}
		out[len(out)-1].Rows = append(out[len(out)-1].Rows, r)
	}
	return out, nil
}

// takeOver is another gateway claiming dev: its epoch moves on.
func (f *fakeStore) takeOver(dev string) { f.epochs[dev]++ }

func (f *fakeStore) Renew(_ context.Context, _ string, leases []Lease, _ time.Duration) ([]Lease, error) {
	var out []Lease
	for _, l := range leases {
		if slices.Contains(f.kept, l.Device) && f.epochs[l.Device] == l.Epoch {
			out = append(out, l)
		}
	}
	return out, nil
}

func (f *fakeStore) Finish(_ context.Context, _ string, done []Done, drained []Lease) (int, error) {
	if f.down {
		return 0, errors.New("connection refused")
	}
	f.finished = append(f.finished, done)
	f.drained = append(f.drained, drained)
	stale := 0
	for _, d := range done {
		if f.epochs[d.Device] != d.Epoch {
			stale++
		}
	}
	return stale, nil
}

func (f *fakeStore) Release(context.Context, string) error { return nil }

// newTestForwarder returns a Forwarder on st whose jobs go to a dispatcher
// that never runs: Submit only queues, so Pending counts the jobs
// submitted.
func newTestForwarder(t *testing.T, st *fakeStore) (*Forwarder, *forward.Dispatcher) {
	t.Helper()
	bcfg := forward.DefaultConfig()
	disp := forward.NewDispatcher(bcfg, nil, forward.NewBreaker(5, time.Second, time.Now), forward.ExponentialJitter(time.Millisecond, time.Millisecond), time.Now, forward.Hooks{})
	f := New(st, "me", Config{Lease: 10 * time.Second, Timeout: 2 * time.Second, MaxPayloadMemory: 1 << 20}, time.Now, zap.NewNop(), Hooks{Submit: disp.Submit})
	return f, disp
}

func rows(dev string, seqs ...int64) []*outbox.Record {
	var out []*outbox.Record
	for _, s := range seqs {
		out = append(out, &outbox.Record{Seq: s, DSeq: s, DeviceID: dev, Payload: []byte("{}")})
	}
	return out
}

func jobOf(dev string, seq int64) *forward.Job { return &forward.Job{Seq: seq, DeviceID: dev} }

// admit is Admit without the lease's end.
func (f *Forwarder) admit(j *forward.Job) error {
	_, err := f.Admit(j)
	return err
}

// settled is Settled of a delivered job.
func (f *Forwarder) settled(j *forward.Job) { f.Settled(j, nil) }

// TestForwarderOneRowPerDevice: of a device's claimed rows only one is in the
// dispatcher at a time, the next only after the last one's delete
// committed (Finish), and the lease goes back once all are done.
func TestForwarderOneRowPerDevice(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{rows("d", 1, 2, 3)}}
	s, disp := newTestForwarder(t, st)
	ctx := context.Background()
	s.claim(ctx)
	if n := disp.Pending(); n != 1 {
		t.Fatalf("%d jobs submitted after the claim, want 1", n)
	}
	for i, seq := range []int64{1, 2, 3} {
		if err := s.admit(jobOf("d", seq)); err != nil {
			t.Fatalf("admit row %d: %v", seq, err)
		}
		s.settled(jobOf("d", seq))
		if n := disp.Pending(); n != i+1 {
			t.Fatalf("row %d settled but not deleted: %d jobs submitted, want %d", seq, n, i+1)
		}
		s.finish(ctx)
	}
	if n := disp.Pending(); n != 3 {
		t.Fatalf("%d jobs submitted in all, want 3", n)
	}
	if got := st.drained[len(st.drained)-1]; len(got) != 1 || got[0].Device != "d" || s.Held() != 0 {
		t.Fatalf("last Finish drained %v with %d devices held, want [d] and 0", got, s.Held())
	}
	if s.queued != 0 {
		t.Fatalf("queued payload bytes %d after everything settled", s.queued)
	}
}

// TestForwarderLostLease: a lease found taken over at renewal drops the
// device's jobs; when the device is claimed again later, a job of the old
// lease that still settles neither counts as the new lease's job nor lets
// a second row into the dispatcher.
func TestForwarderLostLease(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{rows("d", 1, 2), rows("d", 2, 3)}}
	s, disp := newTestForwarder(t, st)
	ctx := context.Background()
	s.claim(ctx)                         // row 1 in the dispatcher, row 2 queued
	if err := s.renew(ctx); err != nil { // kept: none → lost
		t.Fatal(err)
	}
	if err := s.admit(jobOf("d", 1)); !errors.Is(err, forward.ErrRelinquished) {
		t.Fatalf("admit after the lease was lost: %v, want ErrRelinquished", err)
	}
	if s.Held() != 0 || s.queued != 0 {
		t.Fatalf("lost device still held (%d) or its rows counted (%d bytes)", s.Held(), s.queued)
	}
	s.claim(ctx) // claimed again: rows 2 and 3, row 2 submitted
	before := disp.Pending()
	s.settled(jobOf("d", 1)) // a POST of the old lease ends after all
	s.finish(ctx)
	if disp.Pending() != before {
		t.Fatalf("the old lease's row 1 settling let row 3 in: %d jobs, want %d", disp.Pending(), before)
	}
	if err := s.admit(jobOf("d", 2)); err != nil {
		t.Fatalf("the new lease's row 2: %v", err)
	}
	if err := s.admit(jobOf("d", 1)); !errors.Is(err, forward.ErrRelinquished) {
		t.Fatalf("a retry of the old lease's row 1 was admitted: %v", err)
	}
}

// TestForwarderAdmitNeedsLease: a row is not posted unless its device's lease
// is known to outlast the POST (now + backend.timeout).
func TestForwarderAdmitNeedsLease(t *testing.T) {
	st := &fakeStore{}
	s, _ := newTestForwarder(t, st)
	s.submit([]Claim{{Lease: Lease{Device: "d", Epoch: 1}, Rows: rows("d", 1)}}, time.Now().Add(-s.cfg.Lease+time.Second)) // lease confirmed until 1 s from now
	if err := s.admit(jobOf("d", 1)); !errors.Is(err, ErrLeaseUnconfirmed) {
		t.Fatalf("admit with 1 s of lease left and a 2 s timeout: %v, want ErrLeaseUnconfirmed", err)
	}
	st.kept, st.epochs = []string{"d"}, map[string]int64{"d": 1}
	if err := s.renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.admit(jobOf("d", 1)); err != nil {
		t.Fatalf("admit after renewal: %v", err)
	}
}

// TestForwarderReclaimOwnExpiredLease: the database goes away while a row is
// settled but not deleted; the lease runs out, and this same gateway
// claims the device again once the database is back, getting the rows it
// still holds queued. Each row must reach the dispatcher once: the new
// claim replaces the held queue, it does not append to it. (Seen in
// TestScalePostgresOutage before the fix: a device's 10 queued rows were
// posted twice in a row after the restart.)
func TestForwarderReclaimOwnExpiredLease(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{rows("d", 1, 2, 3), rows("d", 1, 2, 3)}}
	s, disp := newTestForwarder(t, st)
	ctx := context.Background()
	s.claim(ctx) // row 1 in the dispatcher
	s.settled(jobOf("d", 1))
	st.down = true
	s.finish(ctx) // fails: row 1 stays settled, not deleted
	st.down = false
	s.claim(ctx) // the lease ran out meanwhile; this gateway claims d again: rows 1, 2, 3
	if n := disp.Pending(); n != 1 {
		t.Fatalf("%d jobs submitted right after the re-claim, want 1: row 2 must wait for row 1's delete", n)
	}
	var posted []int64
	for range 10 {
		s.mu.Lock()
		h := s.held["d"]
		s.mu.Unlock()
		if h == nil {
			break
		}
		if !h.busy {
			t.Fatalf("device held with rows %d queued and none in the dispatcher", len(h.queue))
		}
		if s.done == nil { // the job in the dispatcher, not the settled row 1
			if err := s.admit(jobOf("d", h.cur)); err != nil {
				t.Fatalf("admit row %d: %v", h.cur, err)
			}
			posted = append(posted, h.cur)
			s.settled(jobOf("d", h.cur))
		}
		s.finish(ctx)
	}
	if want := []int64{2, 3}; !slices.Equal(posted, want) || disp.Pending() != 3 {
		t.Fatalf("after the re-claim the dispatcher got rows %v (%d jobs in all), want %v (3 in all)", posted, disp.Pending(), want)
	}
	if s.queued != 0 {
		t.Fatalf("queued payload bytes %d after everything settled", s.queued)
	}
}

// TestForwarderReclaimAfterRowsGone: cut off from the database, this gateway
// never learns that another one took its device over, posted and deleted
// rows 1 and 2, and let the lease go; it then claims the device back and
// gets rows 3 and 4. Its held-back job of row 1 must not be posted again
// (after row 2: a duplicate, and X-Iotgw-Seq going backwards); row 3 is
// next. (From the review of the re-claim fix.)
func TestForwarderReclaimAfterRowsGone(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{rows("d", 1, 2), rows("d", 3, 4)}}
	s, disp := newTestForwarder(t, st)
	ctx := context.Background()
	s.claim(ctx) // job 1 in the dispatcher, held back while the database is gone
	s.claim(ctx) // back: d claimed again, rows 1 and 2 are gone
	if err := s.admit(jobOf("d", 1)); !errors.Is(err, forward.ErrRelinquished) {
		t.Fatalf("job of row 1, deleted by another gateway, admitted: %v", err)
	}
	if err := s.admit(jobOf("d", 3)); err != nil || disp.Pending() != 2 {
		t.Fatalf("row 3: admit %v with %d jobs submitted, want nil and 2 (row 1's stale job, row 3)", err, disp.Pending())
	}
}

// TestForwarderReclaimLostWhileSettled: a lease lost while its row 1 had
// settled but not been deleted, then claimed back with rows 1 and 2: row
// 2 waits for row 1's delete, and that delete does not give the lease
// away while row 2 is still to be posted. (From the review: the lease was
// released with row 2 in the dispatcher, so another gateway could post
// it at the same time.)
func TestForwarderReclaimLostWhileSettled(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{rows("d", 1, 2), rows("d", 1, 2)}}
	s, disp := newTestForwarder(t, st)
	ctx := context.Background()
	s.claim(ctx)                         // job 1 in the dispatcher
	if err := s.renew(ctx); err != nil { // kept: none → lost
		t.Fatal(err)
	}
	s.settled(jobOf("d", 1))
	st.down = true
	s.finish(ctx) // fails: row 1 settled, not deleted
	st.down = false
	s.claim(ctx) // the other holder let go: claimed back with rows 1 and 2
	if n := disp.Pending(); n != 1 {
		t.Fatalf("%d jobs submitted after the claim-back, want 1: row 2 must wait for row 1's delete", n)
	}
	s.finish(ctx) // deletes row 1, submits row 2
	if got := st.drained[len(st.drained)-1]; len(got) != 0 {
		t.Fatalf("row 1's delete released the lease (drained %v) with row 2 still to post", got)
	}
	if err := s.admit(jobOf("d", 2)); err != nil || disp.Pending() != 2 {
		t.Fatalf("row 2: admit %v with %d jobs submitted, want nil and 2", err, disp.Pending())
	}
}

// TestForwarderReclaimLostWhileQueued: a lease lost while row 1's job waits
// in the dispatcher (held back, not posted), then claimed back with rows
// 1 and 2: that job is posted under the new lease, and no second job of
// row 1 is submitted (the dispatcher would post both).
func TestForwarderReclaimLostWhileQueued(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{rows("d", 1, 2), rows("d", 1, 2)}}
	s, disp := newTestForwarder(t, st)
	ctx := context.Background()
	s.claim(ctx)                         // job 1 in the dispatcher
	if err := s.renew(ctx); err != nil { // kept: none → lost; job 1 not yet retried
		t.Fatal(err)
	}
	s.claim(ctx) // claimed back with rows 1 and 2
	if n := disp.Pending(); n != 1 {
		t.Fatalf("%d jobs submitted, want 1: row 1's job is already in the dispatcher", n)
	}
	if err := s.admit(jobOf("d", 1)); err != nil {
		t.Fatalf("row 1's job under the new lease: %v", err)
	}
}

// TestForwarderFencedAfterTakeover: a lease taken over while its job was
// in flight: the job's settlement goes to the store under the old epoch
// (the store refuses it: the row is not deleted behind the new holder's
// back), and the drained lease is not given back.
func TestForwarderFencedAfterTakeover(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{rows("d", 1)}}
	s, _ := newTestForwarder(t, st)
	ctx := context.Background()
	s.claim(ctx)
	j := jobOf("d", 1)
	j.Epoch = 1
	if err := s.admit(j); err != nil {
		t.Fatal(err)
	}
	st.takeOver("d")                     // the POST outlives this gateway's reach of the database
	if err := s.renew(ctx); err != nil { // found lost
		t.Fatal(err)
	}
	s.settled(j)
	s.finish(ctx)
	done := st.finished[len(st.finished)-1]
	if len(done) != 1 || done[0].Epoch != 1 {
		t.Fatalf("finished %+v, want row 1 under epoch 1 (the store refuses it)", done)
	}
	if d := st.drained[len(st.drained)-1]; len(d) != 0 {
		t.Fatalf("a lost lease was drained: %v", d)
	}
	if s.Held() != 0 {
		t.Fatalf("the lost device is still held")
	}
}

// TestForwarderPayloadMemoryZero is finding 3 of issue 15: with
// backend.max_payload_memory 0 nothing was ever claimed (the claim waited
// for the payloads held to drop below 0), so accepted messages were never
// forwarded. 0 means "read payloads when posting": claims go on, and the
// rows reach the dispatcher without payloads.
func TestForwarderPayloadMemoryZero(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{rows("a", 1, 2), rows("b", 3)}}
	disp := forward.NewDispatcher(forward.DefaultConfig(), nil, forward.NewBreaker(5, time.Second, time.Now), forward.ExponentialJitter(time.Millisecond, time.Millisecond), time.Now, forward.Hooks{})
	var jobs []*forward.Job
	s := New(st, "me", Config{Lease: 10 * time.Second, Timeout: 2 * time.Second, MaxPayloadMemory: 0}, time.Now, zap.NewNop(),
		Hooks{Submit: func(j *forward.Job) { jobs = append(jobs, j); disp.Submit(j) }})
	ctx := context.Background()
	s.claim(ctx)
	s.claim(ctx)
	if len(jobs) != 2 {
		t.Fatalf("%d jobs submitted after two claims, want 2 (one per device)", len(jobs))
	}
	for _, j := range jobs {
		if j.Payload != nil {
			t.Errorf("job %d keeps its payload with max_payload_memory 0", j.Seq)
		}
	}
	if s.queued != 0 {
		t.Errorf("%d payload bytes held", s.queued)
	}
}
