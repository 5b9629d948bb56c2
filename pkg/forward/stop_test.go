package forward_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
)

// TestDispatcherStartsNothingAfterCancel: once Run's context is cancelled,
// queued Jobs stay queued (they are in the outbox for the next start);
// only the POST already in flight finishes.
func TestDispatcherStartsNothingAfterCancel(t *testing.T) {
	clock := newFakeClock(t0)
	entered, release := make(chan struct{}, 10), make(chan struct{})
	var posts atomic.Int32
	post := posterFunc(func(ctx context.Context, j *forward.Job) (forward.Response, error) {
		posts.Add(1)
		entered <- struct{}{}
		<-release
		return answer{status: 200}.result()
	})
	h := startDispatcher(t, testConfig(func(c *forward.Config) { c.Workers = 1 }), post, neverOpens(clock.Now), clock.Now)
	for i := range 5 {
		h.d.Submit(&forward.Job{Seq: int64(i + 1), DeviceID: "d", MessageID: "m", ReceivedAt: t0})
	}
	<-entered
	h.cancel()
	close(release)
	select {
	case <-h.done:
	case <-time.After(deadline):
		t.Fatal("Run did not return")
	}
	if n := posts.Load(); n != 1 {
		t.Errorf("%d POSTs, want only the one in flight at cancel", n)
	}
	if n := h.d.Pending(); n != 4 {
		t.Errorf("Pending() = %d, want 4 left queued", n)
	}
}

// TestBreakerAbandonedProbe: a half-open probe whose request could not be
// built (a non-retryable error) does not leave the breaker stuck: the next
// Job may probe.
func TestBreakerAbandonedProbe(t *testing.T) {
	clock := newFakeClock(t0)
	var n atomic.Int32
	post := posterFunc(func(ctx context.Context, j *forward.Job) (forward.Response, error) {
		switch n.Add(1) {
		case 1:
			return forward.Response{}, &forward.RetryableError{Status: 503}
		case 2:
			return forward.Response{}, errors.New("cannot build request")
		}
		return answer{status: 200}.result()
	})
	b := forward.NewBreaker(1, time.Second, clock.Now)
	cfg := testConfig(func(c *forward.Config) { c.Workers = 1; c.MaxAttempts = 1 })
	h := startDispatcher(t, cfg, post, b, clock.Now)
	h.d.Submit(&forward.Job{Seq: 1, DeviceID: "a", MessageID: "m1", ReceivedAt: t0})
	h.waitSettled(t, 1) // dead after one 503; the breaker is open
	if !b.Open() {
		t.Fatal("breaker not open after a failure at threshold 1")
	}
	clock.Add(2 * time.Second) // cooldown over: half-open
	h.d.Submit(&forward.Job{Seq: 2, DeviceID: "b", MessageID: "m2", ReceivedAt: t0})
	h.waitSettled(t, 1) // the probe: unbuildable, dead
	h.d.Submit(&forward.Job{Seq: 3, DeviceID: "c", MessageID: "m3", ReceivedAt: t0})
	s := h.waitSettled(t, 1)
	if s[0].out.Dead || s[0].out.Response.Status != 200 {
		t.Fatalf("after an abandoned probe, job 3 settled %+v; want a 200", s[0].out)
	}
	if b.Open() {
		t.Error("breaker still open after a successful probe")
	}
}
