package forward_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
)

// fence is a scripted lease for Hooks.Admit: it admits while valid, and
// returns until as the lease's end.
type fence struct {
	mu    sync.Mutex
	valid bool
	until time.Time
	calls int
}

func (f *fence) admit(*forward.Job) (time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if !f.valid {
		return time.Time{}, forward.ErrRelinquished
	}
	return f.until, nil
}

func (f *fence) revoke() {
	f.mu.Lock()
	f.valid = false
	f.mu.Unlock()
}

// TestAdmitAfterLoad is finding 2 of issue 15: a gateway's payload read
// stalled (a frozen database connection) while its lease was taken over;
// when the read came back it posted anyway, because the lease was checked
// only before the read. The Dispatcher must ask Admit again after the
// load, right before the POST, and post nothing once the lease is gone,
// in single and batch mode. The load's context ends Timeout before the
// lease does, and the POST's at the lease's end.
func TestAdmitAfterLoad(t *testing.T) {
	for _, batch := range []bool{false, true} {
		name := "single"
		if batch {
			name = "batch"
		}
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(func(c *forward.Config) {
				c.Workers = 1
				c.MaxPayloadMemory = 0 // every payload is read back when posted
				if batch {
					c.BatchMax, c.BatchURL = 4, "http://backend.invalid/batch"
				}
			})
			until := time.Now().Add(time.Hour)
			f := &fence{valid: true, until: until}
			var posts atomic.Int32
			var postDeadline atomic.Value
			p := &fencePoster{post: func(ctx context.Context) {
				posts.Add(1)
				if d, ok := ctx.Deadline(); ok {
					postDeadline.Store(d)
				}
			}}
			loading, release := make(chan time.Time, 1), make(chan struct{})
			d := forward.NewDispatcher(cfg, p, neverOpens(time.Now), microBackoff, time.Now, forward.Hooks{
				Admit: f.admit,
				Load: func(ctx context.Context, j *forward.Job) ([]byte, error) {
					dl, _ := ctx.Deadline()
					loading <- dl
					<-release // the read stalls; meanwhile the lease moves on
					return []byte(`{}`), nil
				},
				Settled: func(*forward.Job, forward.Outcome) { t.Error("a job settled without a lease") },
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go d.Run(ctx)
			d.Submit(&forward.Job{Seq: 1, Epoch: 7, DeviceID: "d1", MessageID: "m1", Timestamp: "1", ReceivedAt: time.Now()})
			var loadDeadline time.Time
			select {
			case loadDeadline = <-loading:
			case <-time.After(deadline):
				t.Fatal("the payload was never loaded")
			}
			if want := until.Add(-cfg.Timeout); !loadDeadline.Equal(want) {
				t.Errorf("load deadline %v, want the lease's end minus backend.timeout (%v)", loadDeadline, want)
			}
			f.revoke()
			close(release)
			waitFor(t, "the job to be relinquished", func() bool { return d.Pending() == 0 })
			if n := posts.Load(); n != 0 {
				t.Fatalf("%d POSTs after the lease was taken over during the load", n)
			}
			f.mu.Lock()
			calls := f.calls
			f.mu.Unlock()
			if calls < 2 {
				t.Fatalf("Admit asked %d times, want before and after the load", calls)
			}
		})
	}
}

// TestPostDeadlineIsLeaseEnd: an admitted POST cannot outlive the lease
// it was admitted under: the client's timeout ends it, and when the
// lease ends sooner than that (an Admit that keeps its contract never
// allows it, this one does), a context deadline at the lease's end.
func TestPostDeadlineIsLeaseEnd(t *testing.T) {
	cfg := testConfig(func(c *forward.Config) { c.Workers = 1 })
	until := time.Now().Add(cfg.Timeout / 2)
	f := &fence{valid: true, until: until}
	got := make(chan time.Time, 1)
	p := &fencePoster{post: func(ctx context.Context) {
		d, _ := ctx.Deadline()
		got <- d
	}}
	settled := make(chan struct{}, 1)
	d := forward.NewDispatcher(cfg, p, neverOpens(time.Now), microBackoff, time.Now, forward.Hooks{
		Admit:   f.admit,
		Settled: func(*forward.Job, forward.Outcome) { settled <- struct{}{} },
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	d.Submit(&forward.Job{Seq: 1, DeviceID: "d1", MessageID: "m1", Timestamp: "1", Payload: []byte(`{}`), ReceivedAt: time.Now()})
	select {
	case dl := <-got:
		if !dl.Equal(until) {
			t.Fatalf("POST deadline %v, want the lease's end %v", dl, until)
		}
	case <-time.After(deadline):
		t.Fatal("no POST")
	}
	<-settled
}

// fencePoster answers 200 to single and batch POSTs, calling post first.
type fencePoster struct{ post func(ctx context.Context) }

func (p *fencePoster) Post(ctx context.Context, _ *forward.Job) (forward.Response, error) {
	p.post(ctx)
	return forward.Response{Status: 200}, nil
}

func (p *fencePoster) PostBatch(ctx context.Context, jobs []*forward.Job) ([]forward.Response, error) {
	p.post(ctx)
	out := make([]forward.Response, len(jobs))
	for i := range out {
		out[i].Status = 200
	}
	return out, nil
}
