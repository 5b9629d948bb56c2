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
	// Admit, when set, is asked whether j may be posted now: before its
	// payload is loaded and again right before the POST, after the load,
	// and in batch mode for every item. It returns when the right to post
	// j ends (its lease's end; zero: no end): a load must end Timeout
	// before it, and the POST's deadline is it. An error wrapping
	// ErrRelinquished drops j without settling it (another gateway owns it
	// now); any other error retries it after a backoff without counting an
	// attempt.
	Admit func(j *Job) (until time.Time, err error)
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

// BreakerCooling reports whether the circuit breaker lets no call through
// now, not even a probe (Breaker.Cooling).
func (d *Dispatcher) BreakerCooling() bool { return d.breaker.Cooling() }

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
		until, ok := d.prepare(ctx, j)
		if !ok {
			d.breaker.Abandon() // no call made: release a probe slot
			continue
		}
		pctx, cancel := d.deadline(until)
		resp, err := d.post.Post(pctx, j)
		cancel()
		d.unload(j)
		d.account(err)
		d.answered(ctx, j, resp, err)
	}
}

// deadline returns the context of a POST that must end by until (zero:
// no end but the client's timeout). The client's timeout (Config.Timeout)
// ends every POST already; a context deadline (a timer per POST) is added
// only when until comes sooner, which an Admit that keeps its contract
// (now + Timeout inside the lease) never lets happen.
func (d *Dispatcher) deadline(until time.Time) (context.Context, context.CancelFunc) {
	if until.IsZero() || time.Until(until) > d.cfg.Timeout {
		return d.postCtx, func() {}
	}
	return context.WithDeadline(d.postCtx, until)
}

// account tells the breaker how an attempt went: a retryable failure
// counts against the backend, an answer for it, anything else neither.
func (d *Dispatcher) account(err error) {
	var re *RetryableError
	switch {
	case err == nil:
		d.breaker.Success()
	case errors.As(err, &re):
		if d.postCtx.Err() == nil {
			d.breaker.Failure()
		}
	default:
		d.breaker.Abandon()
	}
}

// answered settles or retries j after an attempt answered with resp or
// failed with err: the one classification of an answer, for a single
// POST and for each item of a batch.
//   - 2xx or a final 4xx: settled with the answer;
//   - retryable (5xx, 429, 408, 401, transport): retried with backoff,
//     unless the POST was aborted at shutdown (it stays stored);
//   - a redirect (never followed): dead at once, with the reason;
//   - anything else (a request that cannot be built): dead.
func (d *Dispatcher) answered(ctx context.Context, j *Job, resp Response, err error) {
	if err == nil {
		switch {
		case retryableStatus(resp.Status): // a batch item
			err = &RetryableError{Status: resp.Status}
		case isRedirect(resp.Status): // a batch item answered 3xx was not delivered either
			err = &RedirectError{Status: resp.Status}
		default:
			d.settle(j, Outcome{Response: resp})
			return
		}
	}
	var re *RetryableError
	var rd *RedirectError
	switch {
	case errors.As(err, &rd):
		j.Attempts++
		d.settle(j, Outcome{Dead: true, Err: err})
	case errors.As(err, &re):
		if d.postCtx.Err() != nil { // aborted at shutdown: leave it in the outbox
			return
		}
		d.retry(ctx, j, err)
	default:
		d.settle(j, Outcome{Dead: true, Err: err})
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
			if _, ok := d.prepare(ctx, j); ok {
				loaded = append(loaded, j)
			}
		}
		if !d.postBatch(ctx, bp, loaded) {
			d.breaker.Abandon() // no call made: release a probe slot
		}
	}
}

// postBatch posts loaded jobs as one batch, each admitted again right
// before the POST (loading the others took time), with the earliest of
// their deadlines. A whole batch refused with a final status (a 4xx for
// the batch, not per item) is posted again item by item, so that one
// device's message the backend refuses never drops another device's. It
// reports false when no call was made.
func (d *Dispatcher) postBatch(ctx context.Context, bp BatchPoster, loaded []*Job) bool {
	jobs := loaded[:0:0]
	var until time.Time
	for _, j := range loaded {
		u, ok := d.admit(ctx, j)
		if !ok {
			d.unload(j)
			continue
		}
		if !u.IsZero() && (until.IsZero() || u.Before(until)) {
			until = u
		}
		jobs = append(jobs, j)
	}
	if len(jobs) == 0 {
		return false
	}
	pctx, cancel := d.deadline(until)
	resps, err := bp.PostBatch(pctx, jobs)
	cancel()
	var br *BatchRefusedError
	if errors.As(err, &br) && len(jobs) > 1 {
		d.breaker.Success() // the backend answered
		for _, j := range jobs {
			d.postBatch(ctx, bp, []*Job{j})
		}
		return true
	}
	for _, j := range jobs {
		d.unload(j)
	}
	d.account(err)
	if err != nil {
		if errors.As(err, &br) { // a batch of one: the answer is its own
			d.answered(ctx, jobs[0], Response{Status: br.Status, Body: br.Body}, nil)
			return true
		}
		for _, j := range jobs {
			d.answered(ctx, j, Response{}, err)
		}
		return true
	}
	for i, j := range jobs {
		d.answered(ctx, j, resps[i], nil)
	}
	return true
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

// prepare makes j ready to post: admitted (Hooks.Admit), its payload
// read back if it was dropped (Hooks.Load, with a deadline Timeout before
// the admission ends), and admitted again after the load, right before
// the POST. It returns when the right to post j ends (zero: no end), or
// false when j cannot be posted now: it was then dropped (relinquished),
// dead-lettered (payload gone) or rescheduled.
func (d *Dispatcher) prepare(ctx context.Context, j *Job) (time.Time, bool) {
	until, ok := d.admit(ctx, j)
	if !ok {
		return time.Time{}, false
	}
	if j.Payload == nil && d.hooks.Load != nil {
		lctx, cancel := d.postCtx, context.CancelFunc(func() {})
		if !until.IsZero() {
			lctx, cancel = context.WithDeadline(d.postCtx, until.Add(-d.cfg.Timeout))
		}
		p, err := d.hooks.Load(lctx, j)
		cancel()
		switch {
		case err == nil:
			j.Payload = p
		case errors.Is(err, ErrPayloadGone):
			d.settle(j, Outcome{Dead: true, Err: err})
			return time.Time{}, false
		default:
			d.reschedule(ctx, j, err)
			return time.Time{}, false
		}
		if d.hooks.Admit != nil {
			if until, ok = d.admit(ctx, j); !ok {
				d.unload(j)
				return time.Time{}, false
			}
		}
	}
	return until, true
}

// admit asks Hooks.Admit whether j may be posted now and returns until
// when; on a refusal it drops j (relinquished) or reschedules it.
func (d *Dispatcher) admit(ctx context.Context, j *Job) (time.Time, bool) {
	if d.hooks.Admit == nil {
		return time.Time{}, true
	}
	until, err := d.hooks.Admit(j)
	switch {
	case err == nil:
		return until, true
	case errors.Is(err, ErrRelinquished):
		d.done(j)
	default:
		d.reschedule(ctx, j, err)
	}
	return time.Time{}, false
}

// reschedule tries j again after a backoff, without counting an attempt:
// err was not the backend's (the payload could not be read, the lease is
// not confirmed).
func (d *Dispatcher) reschedule(ctx context.Context, j *Job, err error) {
	delay := d.backoff(max(j.Attempts, 1))
	if d.hooks.Retry != nil {
		d.hooks.Retry(j, err, delay)
	}
	d.later(ctx, j.DeviceID, delay)
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
