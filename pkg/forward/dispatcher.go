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

// BatchPoster makes one delivery attempt for several Jobs at once (batch
// mode, Config.BatchMax > 1). It returns one Response per Job, in order, or
// a whole-batch error as Poster.Post does. A Response with a retryable
// status (5xx, 429, 408) retries that Job alone. *Client implements it.
type BatchPoster interface {
	PostBatch(ctx context.Context, jobs []*Job) ([]Response, error)
}

// Outcome is how a Job settled.
type Outcome struct {
	// Response is the backend's answer: a 2xx or a final 4xx. Zero when Dead.
	Response Response
	// Dead is true when the Job ran out of attempts or age, or was answered
	// with a redirect (a *RedirectError, never followed).
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
	// Load reads a Job's payload back from where it is stored durably
	// (the outbox), for a Job whose payload the Dispatcher dropped to stay
	// within Config.MaxPayloadMemory. An error wrapping ErrPayloadGone
	// dead-letters the Job; any other is retried after a backoff, without
	// counting an attempt. When Load is nil, payloads are always kept.
	Load func(ctx context.Context, j *Job) ([]byte, error)
	// Admit, when set, is asked before each attempt whether j may be
	// posted now. An error wrapping ErrRelinquished drops j without
	// settling it (another gateway owns it now); any other error retries
	// it after a backoff without counting an attempt.
	Admit func(j *Job) error
}

// ErrRelinquished is returned by Hooks.Admit for a Job that is no longer
// this dispatcher's to deliver.
var ErrRelinquished = errors.New("job relinquished")

// ErrPayloadGone is returned by Hooks.Load when the payload no longer exists.
var ErrPayloadGone = errors.New("payload gone")

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
	held    int64 // bytes of payloads counted against MaxPayloadMemory
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
	if d.hooks.Load != nil && j.Payload != nil && !j.held {
		if n := int64(len(j.Payload)); d.held+n <= d.cfg.MaxPayloadMemory {
			d.held += n
			j.held = true
		} else {
			j.Payload = nil // on disk only; Load reads it back when posted
		}
	}
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

// PayloadBytes returns the bytes of payloads that waiting Jobs keep in
// memory (bounded by Config.MaxPayloadMemory when Hooks.Load is set).
func (d *Dispatcher) PayloadBytes() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.held
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
		if ctx.Err() != nil { // stopping: start no new POST
			return nil, false
		}
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
	if j.held {
		d.held -= int64(len(j.Payload))
		j.held = false
	}
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
	if bp, ok := d.post.(BatchPoster); ok && d.cfg.BatchMax > 1 {
		d.workBatch(ctx, bp)
		return
	}
	for {
		j, ok := d.next(ctx)
		if !ok {
			return
		}
		if ok, wait := d.breaker.Allow(); !ok {
			d.later(ctx, j.DeviceID, wait)
			continue
		}
		if !d.load(ctx, j) {
			d.breaker.Abandon() // no call made: release a probe slot
			continue
		}
		resp, err := d.post.Post(d.postCtx, j)
		d.unload(j)
		var re *RetryableError
		var rd *RedirectError
		switch {
		case err == nil:
			d.breaker.Success()
			d.settle(j, Outcome{Response: resp})
		case errors.As(err, &rd): // final: dead-lettered at once, with the reason
			d.breaker.Abandon()
			j.Attempts++
			d.settle(j, Outcome{Dead: true, Err: err})
		case errors.As(err, &re):
			if d.postCtx.Err() != nil { // aborted at shutdown: leave it in the outbox
				continue
			}
			d.breaker.Failure()
			d.retry(ctx, j, err)
		default: // a request we cannot even build will never succeed
			d.breaker.Abandon()
			d.settle(j, Outcome{Dead: true, Err: err})
		}
	}
}

// workBatch is work in batch mode: each POST carries up to BatchMax ready
// Jobs, at most one per device, so per-device order holds as before.
func (d *Dispatcher) workBatch(ctx context.Context, bp BatchPoster) {
	for {
		jobs, ok := d.nextBatch(ctx)
		if !ok {
			return
		}
		if ok, wait := d.breaker.Allow(); !ok {
			for _, j := range jobs {
				d.later(ctx, j.DeviceID, wait)
			}
			continue
		}
		loaded := jobs[:0]
		for _, j := range jobs {
			if d.load(ctx, j) {
				loaded = append(loaded, j)
			}
		}
		if jobs = loaded; len(jobs) == 0 {
			d.breaker.Abandon() // no call made: release a probe slot
			continue
		}
		resps, err := bp.PostBatch(d.postCtx, jobs)
		for _, j := range jobs {
			d.unload(j)
		}
		var re *RetryableError
		var rd *RedirectError
		switch {
		case err == nil:
			d.breaker.Success()
			for i, j := range jobs {
				if retryableStatus(resps[i].Status) {
					d.retry(ctx, j, &RetryableError{Status: resps[i].Status})
					continue
				}
				if isRedirect(resps[i].Status) { // an item answered 3xx was not delivered either
					j.Attempts++
					d.settle(j, Outcome{Dead: true, Err: &RedirectError{Status: resps[i].Status}})
					continue
				}
				d.settle(j, Outcome{Response: resps[i]})
			}
		case errors.As(err, &rd):
			d.breaker.Abandon()
			for _, j := range jobs {
				j.Attempts++
				d.settle(j, Outcome{Dead: true, Err: err})
			}
		case errors.As(err, &re):
			if d.postCtx.Err() != nil {
				continue
			}
			d.breaker.Failure()
			for _, j := range jobs {
				d.retry(ctx, j, err)
			}
		default:
			d.breaker.Abandon()
			for _, j := range jobs {
				d.settle(j, Outcome{Dead: true, Err: err})
			}
		}
	}
}

// nextBatch waits for a ready device, then takes up to BatchMax ready
// devices' head Jobs, lingering up to BatchLinger for more when the batch
// is not full.
func (d *Dispatcher) nextBatch(ctx context.Context) ([]*Job, bool) {
	j, ok := d.next(ctx)
	if !ok {
		return nil, false
	}
	jobs := []*Job{j}
	var linger <-chan time.Time
	for {
		jobs = d.takeReady(jobs)
		if len(jobs) >= d.cfg.BatchMax || d.cfg.BatchLinger <= 0 {
			return jobs, true
		}
		if linger == nil {
			t := time.NewTimer(d.cfg.BatchLinger)
			defer t.Stop()
			linger = t.C
		}
		select {
		case <-linger:
			return d.takeReady(jobs), true
		case <-ctx.Done():
			return jobs, true
		case <-d.wake:
		}
	}
}

// takeReady appends ready devices' head Jobs to jobs, up to BatchMax, and
// wakes another worker if some are left.
func (d *Dispatcher) takeReady(jobs []*Job) []*Job {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(jobs) < d.cfg.BatchMax && len(d.ready) > 0 {
		dev := d.ready[0]
		d.ready[0] = ""
		d.ready = d.ready[1:]
		jobs = append(jobs, d.queues[dev].jobs[0])
	}
	if len(d.ready) > 0 {
		d.signal()
	}
	return jobs
}

// load makes sure j has its payload, reading it back with Hooks.Load if
// it was dropped. It reports false when j cannot be posted now: it was
// then dead-lettered (payload gone) or rescheduled (read failed).
func (d *Dispatcher) load(ctx context.Context, j *Job) bool {
	if d.hooks.Admit != nil {
		if err := d.hooks.Admit(j); errors.Is(err, ErrRelinquished) {
			d.done(j)
			return false
		} else if err != nil {
			delay := d.backoff(max(j.Attempts, 1))
			if d.hooks.Retry != nil {
				d.hooks.Retry(j, err, delay)
			}
			d.later(ctx, j.DeviceID, delay)
			return false
		}
	}
	if j.Payload != nil || d.hooks.Load == nil {
		return true
	}
	p, err := d.hooks.Load(d.postCtx, j)
	switch {
	case err == nil:
		j.Payload = p
		return true
	case errors.Is(err, ErrPayloadGone):
		d.settle(j, Outcome{Dead: true, Err: err})
	default:
		delay := d.backoff(max(j.Attempts, 1))
		if d.hooks.Retry != nil {
			d.hooks.Retry(j, err, delay)
		}
		d.later(ctx, j.DeviceID, delay)
	}
	return false
}

// unload drops a payload that Load read back, once the attempt is over,
// so that a Job waiting for a retry holds none.
func (d *Dispatcher) unload(j *Job) {
	if d.hooks.Load != nil && !j.held {
		j.Payload = nil
	}
}

// retry counts a failed attempt of j and schedules the next one, or
// dead-letters j when it ran out of attempts or age.
func (d *Dispatcher) retry(ctx context.Context, j *Job, err error) {
	j.Attempts++
	if j.Attempts >= d.cfg.MaxAttempts || d.now().Sub(j.ReceivedAt) >= d.cfg.MaxAge {
		d.settle(j, Outcome{Dead: true, Err: err})
		return
	}
	delay := d.backoff(j.Attempts)
	if d.hooks.Retry != nil {
		d.hooks.Retry(j, err, delay)
	}
	d.later(ctx, j.DeviceID, delay)
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

var (
	_ Poster      = (*Client)(nil)
	_ BatchPoster = (*Client)(nil)
)
