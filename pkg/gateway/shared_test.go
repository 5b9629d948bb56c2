package gateway

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

// fakeShared scripts the database side of sharedFwd (a unit-test fake:
// test/scale_test.go runs the real one against PostgreSQL).
type fakeShared struct {
	claims   [][]*outbox.Record // returned by successive Claim calls
	kept     []string           // Renew's answer
	finished [][]*outbox.Record // done of each Finish call
	drained  [][]string         // drained of each Finish call
	down     bool               // Finish fails (the database is unreachable)
}

func (f *fakeShared) Claim(context.Context, string, int, int, time.Duration) ([]*outbox.Record, error) {
	if len(f.claims) == 0 {
		return nil, nil
	}
	c := f.claims[0]
	f.claims = f.claims[1:]
	return c, nil
}

func (f *fakeShared) Renew(context.Context, string, []string, time.Duration) ([]string, error) {
	return f.kept, nil
}

func (f *fakeShared) Finish(_ context.Context, _ string, done []*outbox.Record, drained []string) error {
	if f.down {
		return errors.New("connection refused")
	}
	f.finished = append(f.finished, done)
	f.drained = append(f.drained, drained)
	return nil
}

func (f *fakeShared) Release(context.Context, string) error                  { return nil }
func (f *fakeShared) Listen(context.Context, map[string]func(), func(error)) { panic("unused") }

func newTestShared(t *testing.T, st *fakeShared) (*sharedFwd, *forward.Dispatcher) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Storage.Lease, cfg.Backend.Timeout = 10*time.Second, 2*time.Second
	g := &Gateway{cfg: cfg, log: zap.NewNop()}
	g.metrics = newMetrics(g)
	// Never run: Submit only queues, so Pending counts the jobs submitted.
	g.dispatcher = forward.NewDispatcher(cfg.Backend, nil, forward.NewBreaker(5, time.Second, time.Now), forward.ExponentialJitter(time.Millisecond, time.Millisecond), time.Now, forward.Hooks{})
	return newSharedFwd(g, st), g.dispatcher
}

func rows(dev string, seqs ...int64) []*outbox.Record {
	var out []*outbox.Record
	for _, s := range seqs {
		out = append(out, &outbox.Record{Seq: s, DSeq: s, DeviceID: dev, Payload: []byte("{}")})
	}
	return out
}

func jobOf(dev string, seq int64) *forward.Job { return &forward.Job{Seq: seq, DeviceID: dev} }

// TestSharedOneRowPerDevice: of a device's claimed rows only one is in the
// dispatcher at a time, the next only after the last one's delete
// committed (Finish), and the lease goes back once all are done.
func TestSharedOneRowPerDevice(t *testing.T) {
	st := &fakeShared{claims: [][]*outbox.Record{rows("d", 1, 2, 3)}}
	s, disp := newTestShared(t, st)
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
	if got := st.drained[len(st.drained)-1]; len(got) != 1 || got[0] != "d" || s.heldCount() != 0 {
		t.Fatalf("last Finish drained %v with %d devices held, want [d] and 0", got, s.heldCount())
	}
	if s.queued.Load() != 0 {
		t.Fatalf("queued payload bytes %d after everything settled", s.queued.Load())
	}
}

// TestSharedLostLease: a lease found taken over at renewal drops the
// device's jobs; when the device is claimed again later, a job of the old
// lease that still settles neither counts as the new lease's job nor lets
// a second row into the dispatcher.
func TestSharedLostLease(t *testing.T) {
	st := &fakeShared{claims: [][]*outbox.Record{rows("d", 1, 2), rows("d", 2, 3)}}
	s, disp := newTestShared(t, st)
	ctx := context.Background()
	s.claim(ctx) // row 1 in the dispatcher, row 2 queued
	s.renew(ctx) // kept: none → lost
	if err := s.admit(jobOf("d", 1)); !errors.Is(err, forward.ErrRelinquished) {
		t.Fatalf("admit after the lease was lost: %v, want ErrRelinquished", err)
	}
	if s.heldCount() != 0 || s.queued.Load() != 0 {
		t.Fatalf("lost device still held (%d) or its rows counted (%d bytes)", s.heldCount(), s.queued.Load())
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

// TestSharedAdmitNeedsLease: a row is not posted unless its device's lease
// is known to outlast the POST (now + backend.timeout).
func TestSharedAdmitNeedsLease(t *testing.T) {
	st := &fakeShared{}
	s, _ := newTestShared(t, st)
	s.submit(rows("d", 1), time.Now().Add(-s.lease+time.Second)) // lease confirmed until 1 s from now
	if err := s.admit(jobOf("d", 1)); !errors.Is(err, errLeaseUnconfirmed) {
		t.Fatalf("admit with 1 s of lease left and a 2 s timeout: %v, want errLeaseUnconfirmed", err)
	}
	st.kept = []string{"d"}
	s.renew(context.Background())
	if err := s.admit(jobOf("d", 1)); err != nil {
		t.Fatalf("admit after renewal: %v", err)
	}
}

// TestSharedReclaimOwnExpiredLease: the database goes away while a row is
// settled but not deleted; the lease runs out, and this same gateway
// claims the device again once the database is back, getting the rows it
// still holds queued. Each row must reach the dispatcher once: the new
// claim replaces the held queue, it does not append to it. (Seen in
// TestScalePostgresOutage before the fix: a device's 10 queued rows were
// posted twice in a row after the restart.)
func TestSharedReclaimOwnExpiredLease(t *testing.T) {
	st := &fakeShared{claims: [][]*outbox.Record{rows("d", 1, 2, 3), rows("d", 1, 2, 3)}}
	s, disp := newTestShared(t, st)
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
	if s.queued.Load() != 0 {
		t.Fatalf("queued payload bytes %d after everything settled", s.queued.Load())
	}
}

// TestSharedReclaimAfterRowsGone: cut off from the database, this gateway
// never learns that another one took its device over, posted and deleted
// rows 1 and 2, and let the lease go; it then claims the device back and
// gets rows 3 and 4. Its held-back job of row 1 must not be posted again
// (after row 2: a duplicate, and X-Iotgw-Seq going backwards); row 3 is
// next. (From the review of the re-claim fix.)
func TestSharedReclaimAfterRowsGone(t *testing.T) {
	st := &fakeShared{claims: [][]*outbox.Record{rows("d", 1, 2), rows("d", 3, 4)}}
	s, disp := newTestShared(t, st)
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

// TestSharedReclaimLostWhileSettled: a lease lost while its row 1 had
// settled but not been deleted, then claimed back with rows 1 and 2: row
// 2 waits for row 1's delete, and that delete does not give the lease
// away while row 2 is still to be posted. (From the review: the lease was
// released with row 2 in the dispatcher, so another gateway could post
// it at the same time.)
func TestSharedReclaimLostWhileSettled(t *testing.T) {
	st := &fakeShared{claims: [][]*outbox.Record{rows("d", 1, 2), rows("d", 1, 2)}}
	s, disp := newTestShared(t, st)
	ctx := context.Background()
	s.claim(ctx) // job 1 in the dispatcher
	s.renew(ctx) // kept: none → lost
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

// TestSharedReclaimLostWhileQueued: a lease lost while row 1's job waits
// in the dispatcher (held back, not posted), then claimed back with rows
// 1 and 2: that job is posted under the new lease, and no second job of
// row 1 is submitted (the dispatcher would post both).
func TestSharedReclaimLostWhileQueued(t *testing.T) {
	st := &fakeShared{claims: [][]*outbox.Record{rows("d", 1, 2), rows("d", 1, 2)}}
	s, disp := newTestShared(t, st)
	ctx := context.Background()
	s.claim(ctx) // job 1 in the dispatcher
	s.renew(ctx) // kept: none → lost; job 1 not yet retried
	s.claim(ctx) // claimed back with rows 1 and 2
	if n := disp.Pending(); n != 1 {
		t.Fatalf("%d jobs submitted, want 1: row 1's job is already in the dispatcher", n)
	}
	if err := s.admit(jobOf("d", 1)); err != nil {
		t.Fatalf("row 1's job under the new lease: %v", err)
	}
}
