package forward

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Poster makes one delivery attempt. *Client implements it.
type Poster interface {
	Post(ctx context.Context, j *Job) (Response, error)
}

// Outcome is how a Job settled.
type Outcome struct {
	// Response is the backend's answer: a 2xx or a final 4xx. Zero when Dead.
	Response Response
	// Dead is true when the Job ran out of attempts or age.
	Dead bool
	// Err is the last failure, set when Dead.
	Err error
}

// Hooks are optional callbacks; each must return quickly.
type Hooks struct {
	// Settled is called exactly once per Job, when it is done, final or dead.
	Settled func(j *Job, o Outcome)
	// Retry is called after each retryable failure, with the delay chosen.
	Retry func(j *Job, err error, delay time.Duration)
}

// Dispatcher delivers Jobs with a bounded pool of workers, keeping
// per-device order: a device's next Job is not posted before its previous
// one settled. Retries wait on timers, not on workers, so one failing
// device never holds a worker while it waits.
type Dispatcher struct {
	cfg     Config
	post    Poster
	breaker *Breaker
	backoff Backoff
	now     func() time.Time
	hooks   Hooks

	mu      sync.Mutex
	queues  map[string]*devQueue
	ready   []string
	pending int
	wake    chan struct{}

	postCtx context.Context
	abort   context.CancelFunc
}

type devQueue struct {
	jobs []*Job
}

// NewDispatcher returns a Dispatcher. Call Run to start it.
func NewDispatcher(cfg Config, post Poster, breaker *Breaker, backoff Backoff, now func() time.Time, hooks Hooks) *Dispatcher {
	ctx, cancel := context.WithCancel(context.Background())
	return &Dispatcher{cfg: cfg, post: post, breaker: breaker, backoff: backoff, now: now, hooks: hooks,
		queues: make(map[string]*devQueue), wake: make(chan struct{}, 1), postCtx: ctx, abort: cancel}
}

// Submit queues j behind the device's earlier Jobs. It never blocks; the
// caller bounds how many Jobs exist (the outbox bound).
func (d *Dispatcher) Submit(j *Job) {
	d.mu.Lock()
	d.pending++
	q := d.queues[j.DeviceID]
	if q == nil {
		q = &devQueue{}
		d.queues[j.DeviceID] = q
	}
	q.jobs = append(q.jobs, j)
	if len(q.jobs) == 1 {
		d.ready = append(d.ready, j.DeviceID)
		d.signal()
	}
	d.mu.Unlock()
}

// Pending returns how many Jobs are queued or in flight.
func (d *Dispatcher) Pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pending
}

// BreakerOpen reports whether the circuit breaker is refusing calls.
func (d *Dispatcher) BreakerOpen() bool { return d.breaker.Open() }

func (d *Dispatcher) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// next pops a ready device, waiting until there is one or ctx is done.
func (d *Dispatcher) next(ctx context.Context) (*Job, bool) {
	for {
		d.mu.Lock()
		if len(d.ready) > 0 {
			dev := d.ready[0]
			d.ready[0] = ""
			d.ready = d.ready[1:]
			j := d.queues[dev].jobs[0]
			if len(d.ready) > 0 {
				d.signal() // let another worker take the next one
			}
			d.mu.Unlock()
			return j, true
		}
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, false
		case <-d.wake:
		}
	}
}

// requeue makes dev ready again (after a retry delay).
func (d *Dispatcher) requeue(dev string) {
	d.mu.Lock()
	d.ready = append(d.ready, dev)
	d.signal()
	d.mu.Unlock()
}

// done pops the head of j's device queue and readies the next Job.
func (d *Dispatcher) done(j *Job) {
	d.mu.Lock()
	d.pending--
	q := d.queues[j.DeviceID]
	q.jobs[0] = nil
	q.jobs = q.jobs[1:]
	if len(q.jobs) == 0 {
		delete(d.queues, j.DeviceID)
	} else {
		d.ready = append(d.ready, j.DeviceID)
		d.signal()
	}
	d.mu.Unlock()
}

// Run starts cfg.Workers workers and blocks until ctx is cancelled and every
// in-flight POST has finished (Abort cuts those short). Jobs not yet
// settled stay unsettled: they are still in the outbox.
func (d *Dispatcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for range d.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.work(ctx)
		}()
	}
	wg.Wait()
}

// Abort cancels in-flight POSTs, for when the shutdown grace runs out.
func (d *Dispatcher) Abort() { d.abort() }

func (d *Dispatcher) work(ctx context.Context) {
	for {
		j, ok := d.next(ctx)
		if !ok {
			return
		}
		if ok, wait := d.breaker.Allow(); !ok {
			d.later(ctx, j.DeviceID, wait)
			continue
		}
		resp, err := d.post.Post(d.postCtx, j)
		var re *RetryableError
		switch {
		case err == nil:
			d.breaker.Success()
			d.settle(j, Outcome{Response: resp})
		case errors.As(err, &re):
			if d.postCtx.Err() != nil { // aborted at shutdown: leave it in the outbox
				continue
			}
			d.breaker.Failure()
			j.Attempts++
			if j.Attempts >= d.cfg.MaxAttempts || d.now().Sub(j.ReceivedAt) >= d.cfg.MaxAge {
				d.settle(j, Outcome{Dead: true, Err: err})
				continue
			}
			delay := d.backoff(j.Attempts)
			if d.hooks.Retry != nil {
				d.hooks.Retry(j, err, delay)
			}
			d.later(ctx, j.DeviceID, delay)
		default: // a request we cannot even build will never succeed
			d.settle(j, Outcome{Dead: true, Err: err})
		}
	}
}

func (d *Dispatcher) later(ctx context.Context, dev string, delay time.Duration) {
	time.AfterFunc(delay, func() {
		if ctx.Err() == nil {
			d.requeue(dev)
		}
	})
}

func (d *Dispatcher) settle(j *Job, o Outcome) {
	if d.hooks.Settled != nil {
		d.hooks.Settled(j, o)
	}
	d.done(j)
}

var _ Poster = (*Client)(nil)
