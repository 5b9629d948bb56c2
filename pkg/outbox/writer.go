package outbox

import (
	"context"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/tick"
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
// At a steady rate below what one commit at a time can take, every message
// would pay a whole transaction (and with synchronous=full an fsync) of
// its own. While records arrive closer together than Config.CommitLinger,
// a commit of only a few records waits up to CommitLinger after its first
// one for company (see Run): no record waits longer than that for others,
// and none is acked before its transaction is durable.
//
// It also bounds the outbox: Append blocks while MaxPending rows wait for
// the backend, until Release frees room. That is the gateway's backpressure.
type Writer struct {
	s       Committer
	cfg     Config
	hooks   WriterHooks
	in      chan *Record
	slots   chan struct{}
	closed  chan struct{}
	lastSeq int64
	poll    time.Duration

	// Settled rows wait in dels for the next commit without waking the
	// writer: a wake-up per settled message was a goroutine switch per
	// message at steady rates. delTimer (armed while delArmed) or
	// delFlushCount rows send on delDue when they must not wait longer.
	dmu      sync.Mutex
	dels     []int64
	delSince time.Time // when the oldest of dels was settled
	delArmed bool
	delTimer *time.Timer
	delDue   chan struct{}
}

// NewWriter returns a Writer. lastSeq is the highest seq already known to
// the caller (from Store.Pending at start); rows above it that the Writer
// did not insert are reported through Foreign. occupied is how many rows
// already wait in the outbox.
func NewWriter(s Committer, cfg Config, lastSeq int64, occupied int, hooks WriterHooks) *Writer {
	w := &Writer{s: s, cfg: cfg, hooks: hooks, in: make(chan *Record, cfg.BatchMax*2),
		slots: make(chan struct{}, cfg.MaxPending), closed: make(chan struct{}), lastSeq: lastSeq, poll: 2 * time.Second,
		delDue: make(chan struct{}, 1)}
	w.delTimer = time.AfterFunc(time.Hour, w.delTimeout)
	w.delTimer.Stop()
	for range min(occupied, cfg.MaxPending) {
		w.slots <- struct{}{}
	}
	return w
}

// SetForeignPoll sets how often Run looks for rows another process added
// (default 2s). Call it before Run.
func (w *Writer) SetForeignPoll(d time.Duration) { w.poll = d }

// Queued is how many appended records wait for the writer to take them
// into a commit: a backlog, not the outbox's size.
func (w *Writer) Queued() int { return len(w.in) }

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
// slot is released once that commits. It does not wake the writer unless
// the deletion must not wait longer (delFlushDelay, delFlushCount). It
// must not be called after Close.
func (w *Writer) Settle(seq int64) {
	w.dmu.Lock()
	if len(w.dels) == 0 {
		w.delSince = time.Now()
	}
	w.dels = append(w.dels, seq)
	n, arm := len(w.dels), !w.delArmed
	w.delArmed = true
	w.dmu.Unlock()
	if arm {
		w.delTimer.Reset(delFlushDelay)
	}
	if n == delFlushCount {
		w.wakeDel()
	}
}

func (w *Writer) wakeDel() {
	select {
	case w.delDue <- struct{}{}:
	default:
	}
}

// delTimeout runs when delTimer fires: it wakes the writer if the oldest
// held deletion has waited delFlushDelay, and otherwise waits for that
// one (the ones before rode in a commit meanwhile).
func (w *Writer) delTimeout() {
	w.dmu.Lock()
	held := len(w.dels) > 0
	var left time.Duration
	if held {
		left = delFlushDelay - time.Since(w.delSince)
	}
	w.delArmed = held && left > 0
	w.dmu.Unlock()
	switch {
	case !held:
	case left > 0:
		w.delTimer.Reset(left)
	default:
		w.wakeDel()
	}
}

func (w *Writer) heldDels() int {
	w.dmu.Lock()
	defer w.dmu.Unlock()
	return len(w.dels)
}

// takeDels moves the held deletions to buf (reused) and returns it.
func (w *Writer) takeDels(buf []int64) []int64 {
	w.dmu.Lock()
	buf = append(buf[:0], w.dels...)
	w.dels = w.dels[:0]
	w.dmu.Unlock()
	return buf
}

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

// lingerSmall is the largest batch that lingers (CommitLinger): a commit's
// fixed cost is most of a small one (BenchmarkWrite: about 270 µs of CPU
// for one record, 25 µs per record at 16), and a larger batch means records
// are arriving faster than commits finish, which groups them anyway.
const lingerSmall = 16

// gapWeight is the weight of the newest inter-arrival gap in the running
// mean that decides whether a batch lingers (1/gapWeight).
const gapWeight = 8

// Run commits batches until Close has been called and the input drained,
// or until ctx ends (then an uncommitted batch is dropped unacked, and the
// broker will redeliver it).
//
// A batch of fewer than lingerSmall records lingers: it waits for more,
// up to CommitLinger after its first record arrived, but only while records
// have been arriving less than CommitLinger apart on average (a running
// mean of the gaps), so that at rates too low to form groups no record
// waits for company that would not come.
func (w *Writer) Run(ctx context.Context) {
	defer w.delTimer.Stop()
	recs := make([]*Record, 0, w.cfg.BatchMax)
	var dels []int64
	poll, stopPoll := tick.Aligned(w.poll)
	defer stopPoll()
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	in, closed := w.in, false
	var last time.Time         // when the last record arrived
	var gap time.Duration = -1 // running mean of the gaps between records; -1: none yet
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
		case <-w.delDue:
			due = true
		case <-poll.C:
			w.pollForeign(ctx)
			continue
		case <-ctx.Done():
			return
		}
		var first time.Time
		if len(recs) > 0 {
			first = time.Now()
			if !last.IsZero() {
				if d := first.Sub(last); gap < 0 {
					gap = d
				} else {
					gap += (d - gap) / gapWeight
				}
			}
			last = first
		}
		in, closed = w.fill(&recs, in, closed)
		if lg := w.cfg.CommitLinger; lg > 0 && len(recs) > 0 && len(recs) < lingerSmall && in != nil && gap >= 0 && gap < lg {
			linger.Reset(lg - time.Since(first))
		wait:
			for len(recs) < w.cfg.BatchMax {
				select {
				case rec, ok := <-in:
					if !ok {
						in, closed = nil, true
						break wait
					}
					recs = append(recs, rec)
				case <-linger.C:
					break wait
				case <-ctx.Done():
					return
				}
			}
			linger.Stop()
			if n := len(recs); n > 1 { // the lingered records' gaps count too
				now := time.Now()
				gap += (now.Sub(first)/time.Duration(n-1) - gap) / gapWeight
				last = now
			}
			in, closed = w.fill(&recs, in, closed)
		}
		if len(recs) > 0 || due || closed {
			dels = w.takeDels(dels)
		}
		if len(recs) > 0 || len(dels) > 0 {
			if !w.commit(ctx, recs, dels) {
				return
			}
			dels = dels[:0]
		}
		if closed && len(in) == 0 && w.heldDels() == 0 {
			return
		}
	}
}

// fill adds to recs, without waiting, what is queued already, up to
// BatchMax; it returns in (nil once closed) and whether it was closed.
func (w *Writer) fill(recs *[]*Record, in chan *Record, closed bool) (chan *Record, bool) {
	for in != nil && len(*recs) < w.cfg.BatchMax {
		select {
		case rec, ok := <-in:
			if !ok {
				return nil, true
			}
			*recs = append(*recs, rec)
		default:
			return in, closed
		}
	}
	return in, closed
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
