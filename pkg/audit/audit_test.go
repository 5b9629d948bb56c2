package audit

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_000, 0).UTC()

func clockAt(t time.Time) func() time.Time { return func() time.Time { return t } }

func openTemp(t *testing.T) (*Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "registry.db")
	l, err := Open(context.Background(), path, clockAt(t0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

// fill appends n entries of mixed kinds.
func fill(t *testing.T, l *Log, n int) {
	t.Helper()
	for i := range n {
		e := &Entry{At: t0.Add(time.Duration(i) * time.Second), Actor: "cli:alice", Device: fmt.Sprintf("sensor_%03d", i), Action: "device.add"}
		if i%2 == 1 {
			e.Actor, e.Action, e.Reason, e.MessageID, e.Count = "gateway", "reject", "rate_limited", "550e8400-e29b-41d4-a716-446655440000", 41
		}
		if err := l.Append(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
}

func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestChainVerifies(t *testing.T) { forEngines(t, testChainVerifies) }

func testChainVerifies(t *testing.T, e engine) {
	l, _ := e.open(t)
	if n, err := l.Verify(context.Background()); err != nil || n != 0 {
		t.Fatalf("empty chain: %d, %v", n, err)
	}
	fill(t, l, 10)
	n, err := l.Verify(context.Background())
	if err != nil || n != 10 {
		t.Fatalf("Verify = %d, %v; want 10, nil", n, err)
	}
	tail, err := l.Tail(context.Background(), 3)
	if err != nil || len(tail) != 3 || tail[0].Seq != 8 || tail[2].Seq != 10 {
		t.Fatalf("Tail(3) = %v, %v", tail, err)
	}
	if tail[1].PrevHash != tail[0].Hash || tail[1].Count != 1 || tail[2].Count != 41 {
		t.Fatalf("tail entries not chained or counts lost: %+v", tail)
	}
}

// TestHashEncodingUnambiguous: moving bytes between adjacent fields, or
// changing any field, changes the hash.
func TestHashEncodingUnambiguous(t *testing.T) {
	base := Entry{Seq: 7, At: t0, Actor: "gateway", Device: "ab", Action: "reject", Reason: "stale", MessageID: "m", Count: 2}
	seen := map[[32]byte]string{Hash(&base): "base"}
	muts := map[string]func(*Entry){
		"device/action boundary": func(e *Entry) { e.Device, e.Action = "abr", "eject" },
		"actor/device boundary":  func(e *Entry) { e.Actor, e.Device = "gatewaya", "b" },
		"seq":                    func(e *Entry) { e.Seq = 8 },
		"time":                   func(e *Entry) { e.At = e.At.Add(time.Millisecond) },
		"count":                  func(e *Entry) { e.Count = 3 },
		"message id":             func(e *Entry) { e.MessageID = "n" },
		"prev":                   func(e *Entry) { e.PrevHash[31] = 1 },
	}
	for name, mut := range muts {
		e := base
		mut(&e)
		h := Hash(&e)
		if other, dup := seen[h]; dup {
			t.Fatalf("%s hashes like %s", name, other)
		}
		seen[h] = name
	}
}

func TestVerifyNamesFirstBrokenEntry(t *testing.T) { forEngines(t, testVerifyNamesFirstBrokenEntry) }

func testVerifyNamesFirstBrokenEntry(t *testing.T, e engine) {
	tests := []struct {
		name    string
		tamper  string // SQL run against the file
		wantSeq int64
		wantWhy string
	}{
		{"edited count", `UPDATE audit_log SET count = 1 WHERE seq = 4`, 4, "edited"},
		{"edited device", `UPDATE audit_log SET device = 'sensor_999' WHERE seq = 3`, 3, "edited"},
		{"edited time", `UPDATE audit_log SET at_ms = at_ms + 1 WHERE seq = 6`, 6, "edited"},
		{"deleted middle", `DELETE FROM audit_log WHERE seq = 5`, 6, "deleted"},
		{"deleted first", `DELETE FROM audit_log WHERE seq = 1`, 2, "starts at seq 2"},
		{"deleted last", `DELETE FROM audit_log WHERE seq = 8`, 8, "deleted at the end"},
		{"deleted last two", `DELETE FROM audit_log WHERE seq >= 7`, 7, "deleted at the end"},
		{"inserted at the end without the head", `INSERT INTO audit_log SELECT 9, at_ms, actor, device, action, reason, message_id, count, hash, prev_hash FROM audit_log WHERE seq = 8`, 9, ""},
		{"inserted by renumbering", `UPDATE audit_log SET seq = -seq WHERE seq >= 5; UPDATE audit_log SET seq = 1 - seq WHERE seq < 0;
			INSERT INTO audit_log SELECT 5, at_ms, actor, device, action, reason, message_id, count, prev_hash, hash FROM audit_log WHERE seq = 6`, 6, "prev_hash"},
		{"head removed", `DELETE FROM audit_head`, 8, "head is missing"},
		{"last entry replaced, head kept", `UPDATE audit_log SET hash = prev_hash WHERE seq = 8`, 8, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, raw := e.open(t)
			fill(t, l, 8)
			if _, err := raw.Exec(tc.tamper); err != nil {
				t.Fatal(err)
			}
			_, err := l.Verify(context.Background())
			var be *BrokenError
			if !errors.As(err, &be) {
				t.Fatalf("Verify = %v, want a BrokenError", err)
			}
			if be.Seq != tc.wantSeq || !strings.Contains(be.Error(), tc.wantWhy) {
				t.Fatalf("Verify = %q, want entry %d (%s)", be, tc.wantSeq, tc.wantWhy)
			}
		})
	}
}

// TestVerifyCannotDetectConsistentRewrite states the limit: with write
// access to the file, deleting the newest entry and moving the head back
// (or recomputing every hash) leaves a valid chain. Only an anchor kept
// elsewhere catches it (see the package documentation).
func TestVerifyCannotDetectConsistentRewrite(t *testing.T) {
	forEngines(t, testVerifyCannotDetectConsistentRewrite)
}

func testVerifyCannotDetectConsistentRewrite(t *testing.T, e engine) {
	l, db := e.open(t)
	fill(t, l, 5)
	if _, err := db.Exec(`DELETE FROM audit_log WHERE seq = 5; UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_log WHERE seq = 4)`); err != nil {
		t.Fatal(err)
	}
	if n, err := l.Verify(context.Background()); err != nil || n != 4 {
		t.Fatalf("Verify = %d, %v: if this now detects the rewrite, update the documented limits", n, err)
	}
}

// TestAnchorCatchesRewrite: an anchor kept elsewhere catches a chain
// rewritten consistently (hashes recomputed) up to the anchored entry.
func TestAnchorCatchesRewrite(t *testing.T) { forEngines(t, testAnchorCatchesRewrite) }

func testAnchorCatchesRewrite(t *testing.T, e engine) {
	l, raw := e.open(t)
	fill(t, l, 5)
	tail, _ := l.Tail(context.Background(), 1)
	seq, hash, err := ParseAnchor(fmt.Sprintf("%d:%x", tail[0].Seq, tail[0].Hash))
	if err != nil || l.CheckAnchor(context.Background(), seq, hash) != nil {
		t.Fatalf("fresh anchor: %v", err)
	}
	// Rewrite: drop everything and append a consistent, different history.
	if _, err := raw.Exec(`DELETE FROM audit_log; DELETE FROM audit_head`); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := l.Append(context.Background(), &Entry{At: t0, Actor: "cli:mallory", Action: "device.add", Device: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Verify(context.Background()); err != nil {
		t.Fatalf("the rewritten chain is consistent, Verify = %v", err)
	}
	if err := l.CheckAnchor(context.Background(), seq, hash); !errors.Is(err, ErrAnchorMismatch) {
		t.Fatalf("CheckAnchor after the rewrite = %v, want ErrAnchorMismatch", err)
	}
	for _, bad := range []string{"5", "0:" + strings.Repeat("0", 64), "5:abc", "x:" + strings.Repeat("0", 64)} {
		if _, _, err := ParseAnchor(bad); err == nil {
			t.Errorf("ParseAnchor(%q) accepted", bad)
		}
	}
}

// TestConcurrentAppendersOneChain: two Logs on one database (the CLI and
// the gateway, or two gateways on PostgreSQL, each with its own
// connections) appending at once still build one linear chain.
func TestConcurrentAppendersOneChain(t *testing.T) { forEngines(t, testConcurrentAppendersOneChain) }

func testConcurrentAppendersOneChain(t *testing.T, e engine) {
	a, _ := e.open(t)
	b := e.again(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i, l := range []*Log{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 100 {
				if err := l.Append(context.Background(), &Entry{Actor: fmt.Sprintf("p%d", i), Action: "device.add", Device: fmt.Sprint(j)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n, err := a.Verify(context.Background()); err != nil || n != 200 {
		t.Fatalf("Verify = %d, %v; want 200 entries in one chain", n, err)
	}
}

func TestAppendRefusesBadEntries(t *testing.T) {
	l, _ := openTemp(t)
	for _, e := range []*Entry{{Actor: "gateway"}, {Action: "x", Device: strings.Repeat("d", 200)}, {Action: "x", Count: -1}} {
		if err := l.Append(context.Background(), e); !errors.Is(err, ErrBadEntry) {
			t.Fatalf("Append(%+v) = %v, want ErrBadEntry", e, err)
		}
	}
}

// TestWriterFolds: a flood of one device and reason becomes one entry per
// second with the count; other devices and reasons get their own.
func TestWriterFolds(t *testing.T) {
	l, _ := openTemp(t)
	now := t0
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	w := NewWriter(l, 100, clock, nil)
	for i := range 3000 { // 3 s of 1000 rejections/s
		at := t0.Add(time.Duration(i) * time.Millisecond)
		w.Record(Entry{At: at, Actor: "gateway", Device: "flood", Action: "reject", Reason: "rate_limited", MessageID: fmt.Sprint(i)})
	}
	w.Record(Entry{At: t0, Actor: "gateway", Device: "flood", Action: "reject", Reason: "stale"})
	w.Record(Entry{At: t0, Actor: "gateway", Device: "other", Action: "reject", Reason: "rate_limited"})
	mu.Lock()
	now = t0.Add(2500 * time.Millisecond) // seconds 0 and 1 are over, 2 is not
	mu.Unlock()
	if err := w.Flush(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	got, _ := l.Tail(context.Background(), 100)
	if len(got) != 4 {
		t.Fatalf("after the first flush: %d entries, want 4 (two seconds of the flood, stale, other)", len(got))
	}
	if got[0].Count != 1000 || got[0].MessageID != "0" || got[0].Device != "flood" {
		t.Fatalf("first folded entry = %+v, want count 1000 and the first message id", got[0])
	}
	if err := w.Flush(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	got, _ = l.Tail(context.Background(), 100)
	var total int64
	for _, e := range got {
		if e.Device == "flood" && e.Reason == "rate_limited" {
			total += e.Count
		}
	}
	if len(got) != 5 || total != 3000 {
		t.Fatalf("after the last flush: %d entries, flood count %d; want 5 and 3000", len(got), total)
	}
	if _, err := l.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestWriterBoundedNeverBlocks: with the database locked, Record still
// returns at once; beyond max waiting entries it drops and counts, and the
// kept entries are written once the lock is gone.
func TestWriterBoundedNeverBlocks(t *testing.T) {
	l, path := openTemp(t)
	var errs int
	w := NewWriter(l, 10, clockAt(t0.Add(time.Hour)), func(error) { errs++ })
	db := rawDB(t, path)
	lock, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(`INSERT INTO audit_head(id, seq, hash) VALUES(1, 0, '')`); err != nil { // holds the write lock
		t.Fatal(err)
	}
	for i := range 50 { // 50 distinct devices: 10 kept, 40 dropped
		w.Record(Entry{At: t0, Actor: "gateway", Device: fmt.Sprint(i), Action: "reject", Reason: "stale"})
	}
	if w.Dropped() != 40 {
		t.Fatalf("Dropped = %d, want 40", w.Dropped())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	if err := w.Flush(ctx, true); err == nil {
		t.Fatal("flush with the database locked succeeded")
	}
	cancel()
	w.Record(Entry{At: t0, Actor: "gateway", Device: "late", Action: "reject", Reason: "stale"}) // over max: dropped
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if n, err := l.Verify(context.Background()); err != nil || n != 10 || errs != 1 || w.Dropped() != 41 {
		t.Fatalf("Verify = %d, %v; errs %d dropped %d; want 10 entries, 1 error, 41 dropped", n, err, errs, w.Dropped())
	}
}

// TestWriterBadEntryDoesNotBlockTheTrail: an entry Append refuses (a
// device id longer than a field may be, from a certificate with a long
// CN) is dropped and counted when recorded; it is never queued, where it
// would fail every later flush and stop the trail for good.
func TestWriterBadEntryDoesNotBlockTheTrail(t *testing.T) {
	l, _ := openTemp(t)
	w := NewWriter(l, 100, clockAt(t0.Add(time.Hour)), nil)
	w.Record(Entry{At: t0, Actor: "gateway", Device: strings.Repeat("d", maxField+1), Action: "reject", Reason: "malformed"})
	w.Record(Entry{At: t0, Actor: "gateway", Device: "sensor", Action: "reject", Reason: "malformed"})
	if err := w.Flush(context.Background(), false); err != nil {
		t.Fatalf("Flush: %v (one bad entry blocks every other)", err)
	}
	if n, err := l.Verify(context.Background()); err != nil || n != 1 {
		t.Fatalf("Verify = %d, %v; want the good entry only", n, err)
	}
	if w.Dropped() != 1 || w.Written() != 1 {
		t.Fatalf("Dropped = %d, Written = %d; want 1 and 1", w.Dropped(), w.Written())
	}
}
