package audit

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/tick"
)

// FlushEvery is how often a Writer appends what it has folded.
const FlushEvery = time.Second

// foldKey is what repeated events share to become one entry: one device,
// one action and reason, one second.
type foldKey struct {
	sec                           int64
	actor, device, action, reason string
}

// Writer appends entries from its own goroutine, off the hot path. Record
// never blocks: events with the same actor, device, action and reason in
// the same second fold into one entry with a count, and when more than
// max distinct entries wait (the database is slow or locked), new ones are
// dropped and counted, never waited for.
type Writer struct {
	log   *Log
	now   func() time.Time
	max   int
	onErr func(error)

	mu      sync.Mutex
	pending map[foldKey]*Entry
	order   []foldKey // first-seen order, so the chain follows time

	dropped, written, folded, failed atomic.Int64
}

// NewWriter returns a Writer appending to log, holding at most max
// distinct entries in memory. onErr (may be nil) hears each failed
// append; the entries are kept and retried at the next flush.
func NewWriter(log *Log, max int, now func() time.Time, onErr func(error)) *Writer {
	return &Writer{log: log, now: now, max: max, onErr: onErr, pending: make(map[foldKey]*Entry)}
}

// Record queues e (At zero means now) for the next flush, folding it into
// a waiting entry of the same second, actor, device, action and reason.
// It is safe for concurrent use and never blocks on I/O.
func (w *Writer) Record(e Entry) {
	if e.At.IsZero() {
		e.At = w.now()
	}
	if e.Count <= 0 {
		e.Count = 1
	}
	if check(&e) != nil {
		// Append would refuse it, and with it every entry of every later
		// flush: drop and count it instead.
		w.dropped.Add(e.Count)
		return
	}
	k := foldKey{e.At.Unix(), e.Actor, e.Device, e.Action, e.Reason}
	w.mu.Lock()
	defer w.mu.Unlock()
	if p, ok := w.pending[k]; ok {
		p.Count += e.Count
		w.folded.Add(e.Count)
		return
	}
	if len(w.pending) >= w.max {
		w.dropped.Add(e.Count)
		return
	}
	w.pending[k] = &e
	w.order = append(w.order, k)
}

// Run flushes every FlushEvery until ctx is cancelled, then flushes
// everything left (with a fresh context: the last second still counts).
func (w *Writer) Run(ctx context.Context) {
	t, stop := tick.Aligned(FlushEvery)
	defer stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			w.Flush(fctx, true)
			cancel()
			return
		case <-t.C:
			w.Flush(ctx, false)
		}
	}
}

// Flush appends the waiting entries whose second is over (all of them
// when all is set) in one transaction. On failure they stay queued.
func (w *Writer) Flush(ctx context.Context, all bool) error {
	cur := w.now().Unix()
	w.mu.Lock()
	var batch []*Entry
	var keep []foldKey
	for _, k := range w.order {
		if all || k.sec < cur {
			batch = append(batch, w.pending[k])
			delete(w.pending, k)
		} else {
			keep = append(keep, k)
		}
	}
	w.order = keep
	w.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	if err := w.log.Append(ctx, batch...); err != nil {
		w.failed.Add(1)
		w.requeue(batch)
		if w.onErr != nil {
			w.onErr(err)
		}
		return err
	}
	w.written.Add(int64(len(batch)))
	return nil
}

// requeue puts a failed batch back in front, merging with anything folded
// meanwhile; beyond max the overflow is dropped and counted.
func (w *Writer) requeue(batch []*Entry) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var order []foldKey
	for _, e := range batch {
		k := foldKey{e.At.Unix(), e.Actor, e.Device, e.Action, e.Reason}
		if p, ok := w.pending[k]; ok {
			p.Count += e.Count
			continue
		}
		if len(w.pending) >= w.max {
			w.dropped.Add(e.Count)
			continue
		}
		e.Seq, e.PrevHash, e.Hash = 0, [32]byte{}, [32]byte{}
		w.pending[k] = e
		order = append(order, k)
	}
	w.order = append(order, w.order...)
}

// Dropped returns how many events were not recorded because too many
// entries were waiting, or because Append would refuse them (a field over
// its limit).
func (w *Writer) Dropped() int64 { return w.dropped.Load() }

// Written returns how many entries were appended.
func (w *Writer) Written() int64 { return w.written.Load() }

// Failed returns how many flushes failed (and were retried).
func (w *Writer) Failed() int64 { return w.failed.Load() }
