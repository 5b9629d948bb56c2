package forward_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
)

// deadline bounds every wait in these tests; reaching it is a failure,
// never the normal path.
const deadline = 5 * time.Second

// posterFunc adapts a function to forward.Poster.
type posterFunc func(ctx context.Context, j *forward.Job) (forward.Response, error)

func (f posterFunc) Post(ctx context.Context, j *forward.Job) (forward.Response, error) {
	return f(ctx, j)
}

// answer is what a fake backend does for one attempt: a status, classified
// as the Client classifies it, or a plain error.
type answer struct {
	status int
	err    error
}

func (a answer) result() (forward.Response, error) {
	switch {
	case a.err != nil:
		return forward.Response{}, a.err
	case a.status >= 500 || a.status == 429 || a.status == 408:
		return forward.Response{Status: a.status}, &forward.RetryableError{Status: a.status}
	}
	return forward.Response{Status: a.status, Body: []byte(fmt.Sprint("answer ", a.status))}, nil
}

type settlement struct {
	job *forward.Job
	out forward.Outcome
}

type retryCall struct {
	attempts int
	err      error
	delay    time.Duration
}

// harness runs a Dispatcher and collects its callbacks.
type harness struct {
	d       *forward.Dispatcher
	settled chan settlement
	retries chan retryCall
	cancel  context.CancelFunc
	done    chan struct{}
}

// microBackoff waits attempt µs: real timers, but no test waits on them.
func microBackoff(attempt int) time.Duration { return time.Duration(attempt) * time.Microsecond }

// neverOpens is a breaker that never trips.
func neverOpens(now func() time.Time) *forward.Breaker {
	return forward.NewBreaker(1<<30, time.Second, now)
}

func testConfig(edit func(*forward.Config)) forward.Config {
	cfg := forward.DefaultConfig()
	cfg.URL = "http://backend.invalid/{device_id}"
	cfg.Workers = 4
	if edit != nil {
		edit(&cfg)
	}
	return cfg
}

func startDispatcher(t *testing.T, cfg forward.Config, p forward.Poster, b *forward.Breaker, now func() time.Time) *harness {
	t.Helper()
	h := &harness{settled: make(chan settlement, 10000), retries: make(chan retryCall, 10000), done: make(chan struct{})}
	h.d = forward.NewDispatcher(cfg, p, b, microBackoff, now, forward.Hooks{
		Settled: func(j *forward.Job, o forward.Outcome) { h.settled <- settlement{j, o} },
		Retry: func(j *forward.Job, err error, delay time.Duration) {
			h.retries <- retryCall{j.Attempts, err, delay}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.d.Run(ctx); close(h.done) }()
	t.Cleanup(func() {
		cancel()
		h.d.Abort()
		select {
		case <-h.done:
		case <-time.After(deadline):
			t.Error("Run did not return after cancel and Abort")
		}
	})
	return h
}

func (h *harness) waitSettled(t *testing.T, n int) []settlement {
	t.Helper()
	out := make([]settlement, 0, n)
	timeout := time.After(deadline)
	for len(out) < n {
		select {
		case s := <-h.settled:
			out = append(out, s)
		case <-timeout:
			t.Fatalf("%d of %d jobs settled within %v", len(out), n, deadline)
		}
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(deadline); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestDispatcherOutcomes(t *testing.T) {
	errBuild := errors.New("build request: bad URL")
	type want struct {
		posts    int   // POSTs made
		retries  int   // Retry hook calls
		attempts int   // Job.Attempts when settled
		status   int   // settled response status, when not dead
		dead     bool  // dead-lettered
		err      error // errors.Is target for Outcome.Err, when dead
		errCode  int   // else the RetryableError status of Outcome.Err, when dead
	}
	tests := []struct {
		name        string
		maxAttempts int
		maxAge      time.Duration
		age         time.Duration // how old the Job is when submitted
		perPost     time.Duration // the clock moves this much during each POST
		answers     []answer      // per attempt; the last one repeats
		want        want
	}{
		{name: "2xx first try", answers: []answer{{status: 200}},
			want: want{posts: 1, status: 200}},
		{name: "final 4xx is not retried", answers: []answer{{status: 404}},
			want: want{posts: 1, status: 404}},
		{name: "final 409 is not retried", answers: []answer{{status: 409}},
			want: want{posts: 1, status: 409}},
		{name: "retry then success", answers: []answer{{status: 503}, {status: 429}, {status: 408}, {status: 201}},
			want: want{posts: 4, retries: 3, attempts: 3, status: 201}},
		{name: "transport error then success", answers: []answer{{err: &forward.RetryableError{Err: errors.New("refused")}}, {status: 200}},
			want: want{posts: 2, retries: 1, attempts: 1, status: 200}},
		{name: "max attempts dead-letters", maxAttempts: 3, answers: []answer{{status: 503}},
			want: want{posts: 3, retries: 2, attempts: 3, dead: true, errCode: 503}},
		{name: "max attempts 1 dead-letters on the first failure", maxAttempts: 1, answers: []answer{{status: 500}},
			want: want{posts: 1, attempts: 1, dead: true, errCode: 500}},
		{name: "success on the last allowed attempt", maxAttempts: 3, answers: []answer{{status: 503}, {status: 503}, {status: 200}},
			want: want{posts: 3, retries: 2, attempts: 2, status: 200}},
		{name: "too old at its first failure", maxAge: time.Minute, age: 2 * time.Minute, answers: []answer{{status: 502}},
			want: want{posts: 1, attempts: 1, dead: true, errCode: 502}},
		{name: "too old but delivered", maxAge: time.Minute, age: 2 * time.Minute, answers: []answer{{status: 200}},
			want: want{posts: 1, status: 200}},
		{name: "ages out while retrying", maxAge: time.Minute, perPost: 25 * time.Second, answers: []answer{{status: 503}},
			want: want{posts: 3, retries: 2, attempts: 3, dead: true, errCode: 503}},
		{name: "unbuildable request is dead at once", answers: []answer{{err: errBuild}},
			want: want{posts: 1, dead: true, err: errBuild}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock(t0)
			cfg := testConfig(func(c *forward.Config) {
				if tc.maxAttempts > 0 {
					c.MaxAttempts = tc.maxAttempts
				}
				if tc.maxAge > 0 {
					c.MaxAge = tc.maxAge
				}
			})
			var posts atomic.Int32
			post := posterFunc(func(_ context.Context, j *forward.Job) (forward.Response, error) {
				n := int(posts.Add(1))
				clock.Add(tc.perPost)
				return tc.answers[min(n, len(tc.answers))-1].result()
			})
			h := startDispatcher(t, cfg, post, neverOpens(clock.Now), clock.Now)
			j := &forward.Job{Seq: 1, DeviceID: "d", MessageID: "m", Timestamp: "1", Payload: []byte("{}"), ReceivedAt: t0.Add(-tc.age)}
			h.d.Submit(j)
			s := h.waitSettled(t, 1)[0]

			w := tc.want
			if got := int(posts.Load()); got != w.posts {
				t.Errorf("%d POSTs, want %d", got, w.posts)
			}
			if j.Attempts != w.attempts {
				t.Errorf("Job.Attempts = %d, want %d", j.Attempts, w.attempts)
			}
			if s.job != j || s.out.Dead != w.dead {
				t.Fatalf("settled %+v dead=%v, want dead=%v", s.job, s.out.Dead, w.dead)
			}
			if w.dead {
				var re *forward.RetryableError
				switch {
				case s.out.Err == nil:
					t.Error("dead outcome without an error")
				case w.err != nil && !errors.Is(s.out.Err, w.err):
					t.Errorf("Outcome.Err = %v, want %v", s.out.Err, w.err)
				case w.errCode != 0 && (!errors.As(s.out.Err, &re) || re.Status != w.errCode):
					t.Errorf("Outcome.Err = %v, want the last failure, status %d", s.out.Err, w.errCode)
				}
				if s.out.Response.Status != 0 {
					t.Errorf("dead outcome carries a response %d", s.out.Response.Status)
				}
			} else if s.out.Response.Status != w.status || s.out.Err != nil {
				t.Errorf("outcome %d %v, want %d", s.out.Response.Status, s.out.Err, w.status)
			}
			// Each retried failure is reported with the attempts so far
			// and the backoff's delay for that attempt.
			for i := range w.retries {
				r := <-h.retries
				if r.attempts != i+1 || r.delay != microBackoff(i+1) || r.err == nil {
					t.Errorf("retry %d: attempts %d, delay %v, err %v; want %d, %v, an error", i, r.attempts, r.delay, r.err, i+1, microBackoff(i+1))
				}
			}
			if n := len(h.retries); n != 0 {
				t.Errorf("%d extra Retry calls", n)
			}
			waitFor(t, "Pending() == 0", func() bool { return h.d.Pending() == 0 })
		})
	}
}

// TestDispatcherKeepsDeviceOrder: with many workers and failures sprinkled
// in, each device's Jobs are posted one at a time and settle in the order
// they were submitted, each exactly once.
func TestDispatcherKeepsDeviceOrder(t *testing.T) {
	const devices, perDevice = 16, 25
	clock := newFakeClock(t0)
	var mu sync.Mutex
	inFlight := map[string]bool{}
	tried := map[int64]int{}
	post := posterFunc(func(_ context.Context, j *forward.Job) (forward.Response, error) {
		mu.Lock()
		if inFlight[j.DeviceID] {
			t.Errorf("two POSTs in flight for device %s", j.DeviceID)
		}
		inFlight[j.DeviceID] = true
		tried[j.Seq]++
		fail := j.Seq%4 == 1 && tried[j.Seq] < 3 // every 4th Job fails twice first
		mu.Unlock()
		runtime.Gosched()
		mu.Lock()
		inFlight[j.DeviceID] = false
		mu.Unlock()
		if fail {
			return answer{status: 503}.result()
		}
		return answer{status: 200}.result()
	})
	h := startDispatcher(t, testConfig(func(c *forward.Config) { c.Workers = 8 }), post, neverOpens(clock.Now), clock.Now)

	seq := int64(0)
	for i := range perDevice {
		for d := range devices {
			seq++
			h.d.Submit(&forward.Job{Seq: seq, DeviceID: fmt.Sprintf("dev-%02d", d), MessageID: fmt.Sprint(i), ReceivedAt: t0})
		}
	}
	got := h.waitSettled(t, devices*perDevice)

	order := map[string][]int64{}
	once := map[int64]bool{}
	for _, s := range got {
		if once[s.job.Seq] {
			t.Errorf("job %d settled twice", s.job.Seq)
		}
		once[s.job.Seq] = true
		if s.out.Dead || s.out.Response.Status != 200 {
			t.Errorf("job %d settled %+v, want 200", s.job.Seq, s.out)
		}
		order[s.job.DeviceID] = append(order[s.job.DeviceID], s.job.Seq)
	}
	for dev, seqs := range order {
		if len(seqs) != perDevice {
			t.Errorf("device %s: %d settled, want %d", dev, len(seqs), perDevice)
		}
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Fatalf("device %s settled out of order: %v", dev, seqs)
			}
		}
	}
	if n := len(h.retries); n != devices*perDevice/4*2 {
		t.Errorf("%d retries, want %d", n, devices*perDevice/4*2)
	}
	waitFor(t, "Pending() == 0", func() bool { return h.d.Pending() == 0 })
}

// TestDispatcherBreakerHoldsPosts: once the breaker opens, the failed Job
// is not posted again until the breaker's (injected) clock passes the
// cooldown; then one probe goes and its success closes the breaker.
func TestDispatcherBreakerHoldsPosts(t *testing.T) {
	const cooldown = 5 * time.Millisecond // also the real re-check interval
	breakerClock, clock := newFakeClock(t0), newFakeClock(t0)
	b := forward.NewBreaker(1, cooldown, breakerClock.Now)
	var posts atomic.Int32
	postedAt := make(chan time.Time, 10)
	post := posterFunc(func(_ context.Context, j *forward.Job) (forward.Response, error) {
		postedAt <- breakerClock.Now()
		if posts.Add(1) == 1 {
			return answer{status: 503}.result()
		}
		return answer{status: 200}.result()
	})
	h := startDispatcher(t, testConfig(nil), post, b, clock.Now)
	h.d.Submit(&forward.Job{Seq: 1, DeviceID: "d", MessageID: "m", ReceivedAt: t0})

	select {
	case <-h.retries:
	case <-time.After(deadline):
		t.Fatal("first failure not retried")
	}
	if !h.d.BreakerOpen() {
		t.Fatal("breaker closed after a failure at threshold 1")
	}
	// Wait until the dispatcher has asked the breaker (which reads its
	// clock) a few times and been refused each time: the clock is frozen
	// inside the cooldown.
	reads := breakerClock.Reads()
	waitFor(t, "the breaker to be consulted", func() bool { return breakerClock.Reads() >= reads+3 })
	if n := posts.Load(); n != 1 {
		t.Fatalf("%d POSTs while the breaker was open, want 1", n)
	}
	breakerClock.Add(cooldown)
	s := h.waitSettled(t, 1)[0]
	if s.out.Response.Status != 200 || posts.Load() != 2 {
		t.Fatalf("settled %+v after %d POSTs, want 200 after 2", s.out, posts.Load())
	}
	<-postedAt
	if probe := <-postedAt; probe.Before(t0.Add(cooldown)) {
		t.Errorf("probe posted at %v, before the cooldown ended at %v", probe, t0.Add(cooldown))
	}
	if h.d.BreakerOpen() {
		t.Error("breaker still open after a successful probe")
	}
}

// TestDispatcherShutdown: cancelling Run's context lets an in-flight POST
// finish and settle; Abort cuts it short and leaves it unsettled, not
// counted as a failure.
func TestDispatcherShutdown(t *testing.T) {
	tests := []struct {
		name        string
		abort       bool
		wantSettled bool
	}{
		{"cancel waits for the in-flight POST", false, true},
		{"abort cuts the in-flight POST short", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock(t0)
			entered, release := make(chan struct{}), make(chan struct{})
			var returned atomic.Bool
			post := posterFunc(func(ctx context.Context, j *forward.Job) (forward.Response, error) {
				defer returned.Store(true)
				close(entered)
				select {
				case <-release:
					return answer{status: 200}.result()
				case <-ctx.Done():
					return forward.Response{}, &forward.RetryableError{Err: ctx.Err()}
				}
			})
			// Threshold 1: a failure counted at abort would open it.
			h := startDispatcher(t, testConfig(nil), post, forward.NewBreaker(1, time.Hour, clock.Now), clock.Now)
			h.d.Submit(&forward.Job{Seq: 1, DeviceID: "d", MessageID: "m", ReceivedAt: t0})
			<-entered
			h.cancel()
			if tc.abort {
				h.d.Abort()
			} else {
				close(release)
			}
			select {
			case <-h.done:
			case <-time.After(deadline):
				t.Fatal("Run did not return")
			}
			if !returned.Load() {
				t.Error("Run returned before the in-flight POST did")
			}
			if got := len(h.settled) == 1; got != tc.wantSettled {
				t.Errorf("settled: %v, want %v", got, tc.wantSettled)
			}
			if n := len(h.retries); n != 0 {
				t.Errorf("%d Retry calls at shutdown", n)
			}
			if h.d.BreakerOpen() {
				t.Error("an aborted POST opened the breaker")
			}
			wantPending := 1
			if tc.wantSettled {
				wantPending = 0
			}
			if n := h.d.Pending(); n != wantPending {
				t.Errorf("Pending() = %d, want %d", n, wantPending)
			}
		})
	}
}
