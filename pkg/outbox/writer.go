package outbox

import (
	"context"
	"time"
)

// Committer is the database the Writer commits to: *Store on SQLite, the
// PostgreSQL engine's outbox when several gateways share one.
type Committer interface {
	// Commit inserts recs (setting Seq and DSeq) and deletes the settled
	// rows dels in one transaction. Records it refused are not inserted
	// and come back in Result.Refused. When lastSeq ≥ 0, Result.Foreign
	// holds rows another process inserted after lastSeq (SQLite only).
	Commit(ctx context.Context, recs []*Record, dels []int64, lastSeq int64) (Result, error)
	// Pending returns rows with seq > after, oldest first; an engine whose
	// rows are claimed rather than owned returns none.
	Pending(ctx context.Context, after int64) ([]*Record, error)
}

// Result is what a commit did besides inserting.
type Result struct {
	Foreign []*Record
	Refused []Refusal
}

// Refusal is a record the database refused in the commit: a replay (its
// id was committed first by another gateway sharing the database); with
// Old, a message timestamped at or below the replay horizon, whose id may
// have been pruned (a copy cannot be told from a new message); or, with
// Quota, its device is at outbox.max_pending_per_device fleet-wide; or,
// with Counter, a counter-mode message whose counter is at or below the
// highest its device had accepted (a replay, for ever, on every engine).
type Refusal struct {
	Rec     *Record
	Quota   bool
	Old     bool
	Counter bool
}

// WriterHooks are the Writer's callbacks, called from its one goroutine.
type WriterHooks struct {
	// Committed receives each batch once it is durable, Seqs set.
	Committed func(batch []*Record)
	// Foreign receives rows that another process (the CLI's dead-letter
	// retry) added to the outbox, once each.
	Foreign func(rows []*Record)
	// Failed is called after each failed commit; the batch is retried
	// after delay and nothing is acked meanwhile.
	Failed func(err error, batchLen int, delay time.Duration)
	// Refused receives the records the database refused (Result.Refused),
	// before Committed receives the rest of their batch.
	Refused func(refused []Refusal)
	// HandOff frees a row's slot when it commits instead of when it is
	// settled: with a shared database, any gateway may forward and delete
	// the row, so Append's bound covers only rows not yet committed.
	HandOff bool
}

// Writer group-commits records: whatever accumulates while one commit runs
// goes into the next transaction, up to BatchMax, so throughput rises with
// load and an idle gateway adds no latency. Deletions of settled rows ride
// in the same transactions, so one fsync serves both.
//
// It also bounds the outbox: Append blocks while MaxPending rows wait for
// the backend, until Release frees room. That is the gateway's backpressure.
type Writer struct {
	s       Committer
	cfg     Config
	hooks   WriterHooks
	in      chan *Record
	del     chan int64
	slots   chan struct{}
	closed  chan struct{}
	lastSeq int64
	poll    time.Duration
}

// NewWriter returns a Writer. lastSeq is the highest seq already known to
// the caller (from Store.Pending at start); rows above it that the Writer
// did not insert are reported through Foreign. occupied is how many rows
// already wait in the outbox.
func NewWriter(s Committer, cfg Config, lastSeq int64, occupied int, hooks WriterHooks) *Writer {
	w := &Writer{s: s, cfg: cfg, hooks: hooks, in: make(chan *Record, cfg.BatchMax*2), del: make(chan int64, 8192),
		slots: make(chan struct{}, cfg.MaxPending), closed: make(chan struct{}), lastSeq: lastSeq, poll: 2 * time.Second}
	for range min(occupied, cfg.MaxPending) {
		w.slots <- struct{}{}
	}
	return w
}

// SetForeignPoll sets how often Run looks for rows another process added
// (default 2s). Call it before Run.
func (w *Writer) SetForeignPoll(d time.Duration) { w.poll = d }

// Append queues rec for the next commit. It blocks while the outbox is full
// (backpressure) and returns ctx's error if ctx ends first. It must not be
// called after Close.
func (w *Writer) Append(ctx context.Context, rec *Record) error {
	select {
	case w.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case w.in <- rec:
		return nil
	case <-ctx.Done():
		<-w.slots
		return ctx.Err()
	}
}

// Settle queues a settled row for deletion in the next transaction; its
// slot is released once that commits. It must not be called after Close.
func (w *Writer) Settle(seq int64) { w.del <- seq }

// Reserve takes n slots for rows inserted by someone else (Foreign rows).
// It never blocks: such rows already exist. Slots beyond MaxPending are not
// taken, so while such rows are pending the outbox holds more than
// MaxPending rows by that many and Occupied counts that many too few; the
// excess drains as they settle (their Release frees slots other rows
// would have freed).
func (w *Writer) Reserve(n int) {
	for range n {
		select {
		case w.slots <- struct{}{}:
		default:
			return
		}
	}
}

// Release frees n slots once n rows left the outbox.
func (w *Writer) Release(n int) {
	for range n {
		select {
		case <-w.slots:
		default:
			return
		}
	}
}

// Occupied returns how many rows are in the outbox or on their way in.
func (w *Writer) Occupied() int { return len(w.slots) }

// Close stops input: Run commits what was appended, then returns.
func (w *Writer) Close() { close(w.in) }

// Settled rows are deleted in the next commit of new rows. When none comes,
// their deletion waits up to delFlushDelay (or until delFlushCount have
// gathered) so that a quiet gateway does not pay a transaction, and with
// synchronous=full an fsync, for every delete: under a steady trickle that
// halved the commits and most of the latency of the next accepted message,
// which would otherwise wait behind a delete-only commit. A crash loses
// only deletes (the rows are posted again: the at-least-once window of
// docs/RELIABILITY.md, widened by at most delFlushDelay).
const (
	delFlushDelay = 100 * time.Millisecond
	delFlushCount = 512
)

// Run commits batches until Close has been called and the input drained,
// or until ctx ends (then an uncommitted batch is dropped unacked, and the
// broker will redeliver it).
func (w *Writer) Run(ctx context.Context) {
	recs := make([]*Record, 0, w.cfg.BatchMax)
	held := make([]int64, 0, 2*delFlushCount) // settled seqs not yet deleted
	tick := time.NewTicker(w.poll)
	defer tick.Stop()
	flush := time.NewTimer(delFlushDelay)
	flush.Stop()
	defer flush.Stop()
	var flushC <-chan time.Time // non-nil while flush is armed
	in, closed := w.in, false
	for {
		clear(recs) // drop the last batch's records (and payloads) for the GC
		recs = recs[:0]
		due := false
		select {
		case rec, ok := <-in:
			if ok {
				recs = append(recs, rec)
			} else {
				in, closed = nil, true
			}
		case seq := <-w.del:
			held = append(held, seq)
		case <-flushC:
			flushC, due = nil, true
		case <-tick.C:
			w.pollForeign(ctx)
			continue
		case <-ctx.Done():
			return
		}
	fill:
		for len(recs) < w.cfg.BatchMax && len(held) < cap(held) {
			select {
			case rec, ok := <-in:
				if !ok {
					in, closed = nil, true
					continue
				}
				recs = append(recs, rec)
			case seq := <-w.del:
				held = append(held, seq)
			default:
				break fill
			}
		}
		due = due || closed || len(held) >= delFlushCount
		switch {
		case len(recs) > 0 || (due && len(held) > 0):
			if !w.commit(ctx, recs, held) {
				return
			}
			held = held[:0]
			if flushC != nil {
				flush.Stop()
				flushC = nil
			}
		case len(held) > 0 && flushC == nil:
			flush.Reset(delFlushDelay)
			flushC = flush.C
		}
		if closed && len(in) == 0 && len(w.del) == 0 && len(held) == 0 {
			return
		}
	}
}

func (w *Writer) commit(ctx context.Context, recs []*Record, dels []int64) bool {
	delay := 50 * time.Millisecond
	for {
		res, err := w.s.Commit(ctx, recs, dels, w.lastSeq)
		if err == nil {
			// The highest seq inserted: a refused record (the last, say)
			// has none, and must not hide the rows before it.
			for _, r := range recs {
				w.lastSeq = max(w.lastSeq, r.Seq)
			}
			if len(res.Foreign) > 0 && w.hooks.Foreign != nil {
				w.hooks.Foreign(res.Foreign)
			}
			accepted := recs
			if len(res.Refused) > 0 {
				accepted = without(recs, res.Refused)
				if w.hooks.Refused != nil {
					w.hooks.Refused(res.Refused)
				}
				w.Release(len(res.Refused)) // never became rows
			}
			if len(accepted) > 0 && w.hooks.Committed != nil {
				w.hooks.Committed(accepted)
			}
			if w.hooks.HandOff {
				w.Release(len(accepted))
			}
			w.Release(len(dels))
			return true
		}
		if w.hooks.Failed != nil {
			w.hooks.Failed(err, len(recs), delay)
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return false
		}
		delay = min(delay*2, 5*time.Second)
	}
}

func (w *Writer) pollForeign(ctx context.Context) {
	rows, err := w.s.Pending(ctx, w.lastSeq)
	if err != nil || len(rows) == 0 {
		return
	}
	w.lastSeq = rows[len(rows)-1].Seq
	if w.hooks.Foreign != nil {
		w.hooks.Foreign(rows)
	}
}

// without returns recs minus the refused ones, in order, in a new slice.
func without(recs []*Record, refused []Refusal) []*Record {
	gone := make(map[*Record]bool, len(refused))
	for _, r := range refused {
		gone[r.Rec] = true
	}
	out := make([]*Record, 0, len(recs)-len(refused))
	for _, r := range recs {
		if !gone[r] {
			out = append(out, r)
		}
	}
	return out
}
