package sqlitestore

import (
	"context"
	"errors"
	"fmt"
	"github.com/iotgw/iotgw/pkg/outbox"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/sqlitex"
)

// deadline bounds every wait; reaching it is a failure.
const deadline = 5 * time.Second

// writerRun is a running Writer and what its hooks reported.
type writerRun struct {
	w         *outbox.Writer
	committed chan []*outbox.Record
	foreign   chan []*outbox.Record
	failed    chan failure
	cancel    context.CancelFunc
	done      chan struct{}
}

type failure struct {
	err      error
	batchLen int
	delay    time.Duration
}

// newWriter returns a Writer whose hooks feed channels; start runs it.
func newWriter(s *Store, cfg outbox.Config, lastSeq int64, occupied int) *writerRun {
	r := &writerRun{committed: make(chan []*outbox.Record, 1000), foreign: make(chan []*outbox.Record, 100),
		failed: make(chan failure, 100), done: make(chan struct{})}
	r.w = outbox.NewWriter(s, cfg, lastSeq, occupied, outbox.WriterHooks{
		Committed: func(b []*outbox.Record) { r.committed <- slices.Clone(b) },
		Foreign:   func(rows []*outbox.Record) { r.foreign <- rows },
		Failed:    func(err error, n int, d time.Duration) { r.failed <- failure{err, n, d} },
	})
	return r
}

func (r *writerRun) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.w.Run(ctx); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		r.wait(t)
	})
}

func (r *writerRun) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(deadline):
		t.Fatal("outbox.Writer.Run did not return")
	}
}

// nextCommit waits for the next committed batch.
func (r *writerRun) nextCommit(t *testing.T) []*outbox.Record {
	t.Helper()
	select {
	case b := <-r.committed:
		return b
	case <-time.After(deadline):
		t.Fatal("no commit")
		return nil
	}
}

// commits collects committed batches until n records were acknowledged.
func (r *writerRun) commits(t *testing.T, n int) [][]*outbox.Record {
	t.Helper()
	var out [][]*outbox.Record
	for got := 0; got < n; {
		b := r.nextCommit(t)
		out = append(out, b)
		got += len(b)
	}
	return out
}

func appendOK(t *testing.T, w *outbox.Writer, recs ...*outbox.Record) {
	t.Helper()
	for _, r := range recs {
		if err := w.Append(bg(), r); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(deadline); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func recs(dev string, from, n int) []*outbox.Record {
	out := make([]*outbox.Record, n)
	for i := range out {
		out[i] = rec(dev, from+i, t0.Add(time.Hour))
	}
	return out
}

// TestWriterGroupCommit: what accumulated before the Writer ran goes in
// one transaction, up to BatchMax, in Append order, and every record is
// acknowledged with its Seq.
func TestWriterGroupCommit(t *testing.T) {
	tests := []struct {
		name      string
		batchMax  int
		appended  int   // before Run starts (at most 2×BatchMax fit)
		wantSizes []int // committed batch sizes
	}{
		{"one record", 16, 1, []int{1}},
		{"all in one transaction", 64, 50, []int{50}},
		{"exactly BatchMax", 32, 32, []int{32}},
		{"split at BatchMax", 8, 16, []int{8, 8}},
		{"BatchMax 1", 1, 2, []int{1, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, func(c *outbox.Config) { c.BatchMax = tc.batchMax })
			s := openStore(t, cfg)
			r := newWriter(s, cfg, 0, 0)
			in := recs("d", 1, tc.appended)
			appendOK(t, r.w, in...)
			r.start(t)
			batches := r.commits(t, tc.appended)
			var sizes []int
			var all []*outbox.Record
			for _, b := range batches {
				sizes = append(sizes, len(b))
				all = append(all, b...)
			}
			if !slices.Equal(sizes, tc.wantSizes) {
				t.Errorf("committed batch sizes %v, want %v", sizes, tc.wantSizes)
			}
			for i, got := range all {
				if got != in[i] || got.Seq == 0 || (i > 0 && got.Seq != all[i-1].Seq+1) {
					t.Fatalf("ack %d: %s seq %d; want %s with the next seq", i, got.MessageID, got.Seq, in[i].MessageID)
				}
			}
			if n := count(t, s); n != tc.appended {
				t.Errorf("%d rows stored, want %d", n, tc.appended)
			}
			if ids := seenIDs(t, s, t0); len(ids) != tc.appended {
				t.Errorf("%d ids stored, want %d", len(ids), tc.appended)
			}
			if n := r.w.Occupied(); n != tc.appended {
				t.Errorf("Occupied() = %d, want %d", n, tc.appended)
			}
		})
	}
}

// TestWriterConcurrentAppends: records appended from many goroutines
// while the Writer runs are each stored and acknowledged exactly once, in
// batches no larger than BatchMax.
func TestWriterConcurrentAppends(t *testing.T) {
	const goroutines, each, batchMax = 8, 100, 32
	cfg := testConfig(t, func(c *outbox.Config) { c.BatchMax = batchMax })
	s := openStore(t, cfg)
	r := newWriter(s, cfg, 0, 0)
	r.start(t)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, rc := range recs(fmt.Sprint("dev", g), g*each, each) {
				if err := r.w.Append(bg(), rc); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
			}
		}()
	}
	batches := r.commits(t, goroutines*each)
	wg.Wait()
	acked := map[string]bool{}
	for _, b := range batches {
		if len(b) > batchMax {
			t.Errorf("batch of %d > BatchMax %d", len(b), batchMax)
		}
		for _, rc := range b {
			if acked[rc.MessageID] {
				t.Errorf("%s acknowledged twice", rc.MessageID)
			}
			acked[rc.MessageID] = true
		}
	}
	if len(acked) != goroutines*each || count(t, s) != goroutines*each {
		t.Errorf("%d acknowledged, %d stored; want %d", len(acked), count(t, s), goroutines*each)
	}
}

// TestWriterSettleDeletes: a settled row is deleted in a later transaction
// and its slot is freed once that commits.
func TestWriterSettleDeletes(t *testing.T) {
	cfg := testConfig(t, nil)
	s := openStore(t, cfg)
	r := newWriter(s, cfg, 0, 0)
	r.start(t)
	in := recs("d", 1, 5)
	appendOK(t, r.w, in...)
	r.commits(t, len(in))

	r.w.Settle(in[1].Seq)
	r.w.Settle(in[3].Seq)
	waitFor(t, "two slots freed", func() bool { return r.w.Occupied() == 3 })
	want := []int64{in[0].Seq, in[2].Seq, in[4].Seq}
	if got := pendingSeqs(t, s, 0); !slices.Equal(got, want) {
		t.Errorf("pending after Settle = %v, want %v", got, want)
	}
	// Deleting a row does not forget its id: replay protection outlives delivery.
	if ids := seenIDs(t, s, t0); len(ids) != 5 {
		t.Errorf("seen ids after Settle: %v, want all 5", ids)
	}
}

// TestWriterBackpressure: Append blocks while MaxPending rows wait, gives
// up with its context, and goes on once a settled row is deleted.
func TestWriterBackpressure(t *testing.T) {
	tests := []struct {
		name       string
		maxPending int
		occupied   int // rows already waiting at start
		appended   int // accepted before the outbox is full
	}{
		{"filled by appends", 3, 0, 3},
		{"filled at start", 3, 3, 0},
		{"partly filled at start", 3, 2, 1},
		{"occupied above the bound is clamped", 2, 10, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, func(c *outbox.Config) { c.MaxPending = tc.maxPending })
			s := openStore(t, cfg)
			old := recs("old", 1, tc.occupied)
			if tc.occupied > 0 {
				insert(t, s, old...)
			}
			lastSeq := int64(0)
			if len(old) > 0 {
				lastSeq = old[len(old)-1].Seq
			}
			r := newWriter(s, cfg, lastSeq, tc.occupied)
			r.start(t)
			in := recs("new", 100, tc.appended)
			appendOK(t, r.w, in...)
			r.commits(t, tc.appended)
			if n := r.w.Occupied(); n != tc.maxPending {
				t.Fatalf("Occupied() = %d, want %d (full)", n, tc.maxPending)
			}

			// Full: Append waits for its context.
			ctx, cancel := context.WithTimeout(bg(), 20*time.Millisecond)
			defer cancel()
			if err := r.w.Append(ctx, rec("late", 1, t0)); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Append to a full outbox = %v, want DeadlineExceeded", err)
			}
			cancelled, cancel2 := context.WithCancel(bg())
			cancel2()
			if err := r.w.Append(cancelled, rec("late", 2, t0)); !errors.Is(err, context.Canceled) {
				t.Fatalf("Append with a cancelled context to a full outbox = %v, want Canceled", err)
			}

			// A blocked Append goes through once a row is settled.
			blocked := make(chan error, 1)
			late := rec("late", 3, t0)
			go func() { blocked <- r.w.Append(bg(), late) }()
			all := append(old, in...)
			r.w.Settle(all[0].Seq)
			select {
			case err := <-blocked:
				if err != nil {
					t.Fatalf("blocked Append: %v", err)
				}
			case <-time.After(deadline):
				t.Fatal("Append still blocked after a row was settled")
			}
			if b := r.nextCommit(t); len(b) != 1 || b[0] != late {
				t.Fatalf("committed %v, want the late record", b)
			}
			if n := r.w.Occupied(); n != tc.maxPending {
				t.Errorf("Occupied() = %d, want %d", n, tc.maxPending)
			}
			// Neither failed Append left a row or an id behind.
			if ids := seenIDs(t, s, t0); slices.Contains(ids, "late/1") || slices.Contains(ids, "late/2") {
				t.Errorf("a refused Append was stored: %v", ids)
			}
		})
	}
}

func TestWriterReserveRelease(t *testing.T) {
	cfg := testConfig(t, func(c *outbox.Config) { c.MaxPending = 5 })
	w := outbox.NewWriter(openStore(t, cfg), cfg, 0, 1, outbox.WriterHooks{})
	steps := []struct {
		op   string
		n    int
		want int // Occupied after
	}{
		{"reserve", 2, 3},
		{"reserve", 10, 5}, // never blocks; stops at the bound
		{"release", 1, 4},
		{"release", 10, 0}, // never blocks; stops at zero
		{"reserve", 0, 0},
	}
	for i, s := range steps {
		if s.op == "reserve" {
			w.Reserve(s.n)
		} else {
			w.Release(s.n)
		}
		if got := w.Occupied(); got != s.want {
			t.Fatalf("step %d: %s(%d) → Occupied() = %d, want %d", i, s.op, s.n, got, s.want)
		}
	}
}

// TestWriterCloseDrains: Close makes Run commit what was appended and
// settled, then return.
func TestWriterCloseDrains(t *testing.T) {
	cfg := testConfig(t, nil)
	s := openStore(t, cfg)
	first := recs("d", 1, 3)
	insert(t, s, first...)
	r := newWriter(s, cfg, first[2].Seq, 3)
	in := recs("d", 10, 4)
	appendOK(t, r.w, in...)
	r.w.Settle(first[0].Seq)
	r.w.Settle(first[1].Seq)
	r.w.Close()
	r.start(t)
	r.wait(t)
	r.commits(t, len(in))
	want := []int64{first[2].Seq, in[0].Seq, in[1].Seq, in[2].Seq, in[3].Seq}
	if got := pendingSeqs(t, s, 0); !slices.Equal(got, want) {
		t.Errorf("after Close: pending %v, want %v", got, want)
	}
	if n := r.w.Occupied(); n != 5 {
		t.Errorf("Occupied() = %d, want 5", n)
	}
}

// TestWriterForeignRows: rows another process adds to the outbox (the
// CLI's dead-letter retry) are reported once, found either by the next
// commit or by the periodic poll; rows known at start never are.
func TestWriterForeignRows(t *testing.T) {
	tests := []struct {
		name string
		poll bool // find them by polling, with no commit in between
	}{
		{"found by the next commit", false},
		{"found by polling", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, nil)
			s := openStore(t, cfg)
			known := recs("known", 1, 2)
			insert(t, s, known...)
			r := newWriter(s, cfg, known[1].Seq, 2)
			if tc.poll {
				r.w.SetForeignPoll(5 * time.Millisecond)
			} else {
				r.w.SetForeignPoll(time.Hour)
			}
			r.start(t)
			appendOK(t, r.w, rec("own", 1, t0.Add(time.Hour)))
			r.nextCommit(t)

			// Another process: its own connection to the same file.
			cli := openStore(t, cfg)
			insert(t, cli, rec("cli", 1, t0), rec("cli", 2, t0))
			if err := cli.Bury(bg(), known[0].Seq, 3, "gave up", t0); err != nil {
				t.Fatal(err)
			}
			if n, err := cli.RetryDead(bg(), nil); err != nil || n != 1 {
				t.Fatalf("RetryDead = %d, %v", n, err)
			}

			if !tc.poll {
				appendOK(t, r.w, rec("own", 2, t0.Add(time.Hour)))
			}
			// A poll may fall between the CLI's two transactions: collect.
			var got []string
			for len(got) < 3 {
				select {
				case rows := <-r.foreign:
					for _, f := range rows {
						got = append(got, f.MessageID)
					}
				case <-time.After(deadline):
					t.Fatalf("foreign rows reported: %v, want 3", got)
				}
			}
			if want := []string{"msg-cli-1", "msg-cli-2", "msg-known-1"}; !slices.Equal(got, want) {
				t.Errorf("foreign rows %v, want %v", got, want)
			}
			// A commit after that reports nothing again.
			appendOK(t, r.w, rec("own", 3, t0.Add(time.Hour)))
			if !tc.poll {
				r.nextCommit(t)
			}
			r.nextCommit(t)
			r.cancel()
			r.wait(t)
			if n := len(r.foreign); n != 0 {
				t.Errorf("%d more Foreign calls", n)
			}
		})
	}
}

// TestWriterCommitFailure: while commits fail nothing is acknowledged and
// nothing is stored; the batch is retried with a growing delay and
// acknowledged once, when a commit succeeds.
func TestWriterCommitFailure(t *testing.T) {
	cfg := testConfig(t, nil)
	s := openStore(t, cfg)
	other, err := sqlitex.Open(cfg.Path) // breaks and mends the schema under the Writer
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Exec(`ALTER TABLE seen RENAME TO seen_away`); err != nil {
		t.Fatal(err)
	}
	r := newWriter(s, cfg, 0, 0)
	in := recs("d", 1, 3)
	appendOK(t, r.w, in...) // before Run: one batch
	r.start(t)

	var fails []failure
	for len(fails) < 2 {
		select {
		case f := <-r.failed:
			fails = append(fails, f)
		case <-time.After(deadline):
			t.Fatal("commit failure not reported")
		}
	}
	for i, f := range fails {
		if f.err == nil || f.batchLen != 3 || f.delay != 50*time.Millisecond<<i {
			t.Errorf("failure %d: %v, batch %d, retry in %v; want an error, 3, %v", i, f.err, f.batchLen, f.delay, 50*time.Millisecond<<i)
		}
	}
	if n := len(r.committed); n != 0 {
		t.Fatalf("%d batches acknowledged while commits failed", n)
	}
	var rows int
	if err := other.QueryRow(`SELECT COUNT(*) FROM outbox`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("outbox rows while commits fail: %d, %v; want 0 (rolled back)", rows, err)
	}

	if _, err := other.Exec(`ALTER TABLE seen_away RENAME TO seen`); err != nil {
		t.Fatal(err)
	}
	b := r.nextCommit(t)
	if len(b) != 3 || b[0] != in[0] || b[2] != in[2] {
		t.Fatalf("committed %d records after recovery, want the 3 appended", len(b))
	}
	if n := count(t, s); n != 3 {
		t.Errorf("%d rows stored, want 3", n)
	}
	if ids := seenIDs(t, s, t0); len(ids) != 3 {
		t.Errorf("seen ids %v, want 3", ids)
	}
}

// TestWriterCancelDropsUncommitted: when Run's context ends while a commit
// keeps failing, Run returns and the batch is never acknowledged.
func TestWriterCancelDropsUncommitted(t *testing.T) {
	cfg := testConfig(t, nil)
	s := openStore(t, cfg)
	r := newWriter(s, cfg, 0, 0)
	s.Close() // every commit fails
	r.start(t)
	appendOK(t, r.w, rec("d", 1, t0))
	select {
	case <-r.failed:
	case <-time.After(deadline):
		t.Fatal("commit failure not reported")
	}
	r.cancel()
	r.wait(t)
	if n := len(r.committed); n != 0 {
		t.Errorf("%d batches acknowledged", n)
	}
}

// TestWriterLingerGroups: records arriving one at a time, closer together
// than outbox.commit_linger, share commits instead of paying one each
// (with commit_linger 0 this stream made about one commit per record).
// It counts commits; it asserts no timing.
func TestWriterLingerGroups(t *testing.T) {
	const n = 30
	cfg := testConfig(t, func(c *outbox.Config) { c.CommitLinger = 100 * time.Millisecond; c.Synchronous = "normal" })
	s := openStore(t, cfg)
	r := newWriter(s, cfg, 0, 0)
	r.start(t)
	in := recs("d", 1, n)
	for _, rc := range in {
		appendOK(t, r.w, rc)
		time.Sleep(2 * time.Millisecond) // a steady stream, one record at a time
	}
	batches := r.commits(t, n)
	if len(batches) > n/3 {
		t.Errorf("%d commits for %d records arriving closer together than the linger, want at most %d", len(batches), n, n/3)
	}
	var all []*outbox.Record
	for _, b := range batches {
		all = append(all, b...)
	}
	for i, got := range all {
		if got != in[i] || got.Seq == 0 {
			t.Fatalf("ack %d: %s seq %d, want %s in Append order", i, got.MessageID, got.Seq, in[i].MessageID)
		}
	}
}

// TestWriterLingerBounded: a record that lingers for company commits
// without any: once the linger is over, no further record or deletion is
// needed to commit and acknowledge it.
func TestWriterLingerBounded(t *testing.T) {
	cfg := testConfig(t, func(c *outbox.Config) { c.CommitLinger = 100 * time.Millisecond; c.Synchronous = "normal" })
	s := openStore(t, cfg)
	r := newWriter(s, cfg, 0, 0)
	r.start(t)
	in := recs("d", 1, 3)
	for _, rc := range in { // close together: the next batch lingers
		appendOK(t, r.w, rc)
		time.Sleep(time.Millisecond)
	}
	r.commits(t, len(in))
	last := rec("d", 100, t0.Add(time.Hour))
	appendOK(t, r.w, last)
	if b := r.nextCommit(t); len(b) != 1 || b[0] != last || b[0].Seq == 0 {
		t.Fatalf("lone lingering record: committed %v, want it alone with its seq", b)
	}
}

// TestWriterSettleFlushCount: settled rows are deleted without waiting
// for a commit of new rows once delFlushCount of them are held, and
// after delFlushDelay otherwise; no new record is needed for either.
func TestWriterSettleFlushCount(t *testing.T) {
	cfg := testConfig(t, func(c *outbox.Config) { c.Synchronous = "normal" })
	s := openStore(t, cfg)
	r := newWriter(s, cfg, 0, 0)
	r.start(t)
	in := recs("d", 1, 600)
	appendOK(t, r.w, in...)
	r.commits(t, len(in))
	for _, rc := range in[:512] {
		r.w.Settle(rc.Seq)
	}
	waitFor(t, "512 slots freed", func() bool { return r.w.Occupied() == len(in)-512 })
	r.w.Settle(in[512].Seq)
	waitFor(t, "the 513th slot freed", func() bool { return r.w.Occupied() == len(in)-513 })
	if got := pendingSeqs(t, s, 0); len(got) != len(in)-513 || got[0] != in[513].Seq {
		t.Errorf("%d rows pending, first %v; want %d from seq %d", len(got), got[:1], len(in)-513, in[513].Seq)
	}
}
