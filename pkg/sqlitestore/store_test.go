package sqlitestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/iotgw/iotgw/pkg/outbox"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// t0 has whole milliseconds, as received_at is stored in milliseconds.
var t0 = time.Unix(1727712000, 123_000_000)

func bg() context.Context { return context.Background() }

func idN(n int) (id [16]byte) {
	binary.BigEndian.PutUint64(id[8:], uint64(n))
	return id
}

// rec builds the n-th test record of dev, expiring at exp.
func rec(dev string, n int, exp time.Time) *outbox.Record {
	return &outbox.Record{DeviceID: dev, MessageID: fmt.Sprintf("msg-%s-%d", dev, n), ID: idN(n),
		Timestamp: fmt.Sprint(1727712000 + n), Payload: []byte(fmt.Sprintf(`{"n": %d}`, n)),
		ReceivedAt: t0, Expires: exp}
}

func testConfig(t *testing.T, edit func(*outbox.Config)) outbox.Config {
	t.Helper()
	cfg := outbox.DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "outbox.db")
	if edit != nil {
		edit(&cfg)
	}
	return cfg
}

func openStore(t *testing.T, cfg outbox.Config) *Store {
	t.Helper()
	s, err := Open(bg(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func insert(t *testing.T, s *Store, recs ...*outbox.Record) {
	t.Helper()
	if err := s.Insert(bg(), recs); err != nil {
		t.Fatalf("Insert: %v", err)
	}
}

func count(t *testing.T, s *Store) int {
	t.Helper()
	n, err := s.Count(bg())
	if err != nil {
		t.Fatalf("Count: %v", err)
	}
	return n
}

func pendingSeqs(t *testing.T, s *Store, after int64) []int64 {
	t.Helper()
	rows, err := s.Pending(bg(), after)
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	var seqs []int64
	for _, r := range rows {
		seqs = append(seqs, r.Seq)
	}
	return seqs
}

// seenIDs returns "dev/n" for every seen id with expiry at or after now.
func seenIDs(t *testing.T, s *Store, now time.Time) []string {
	t.Helper()
	var out []string
	err := s.Seen(bg(), now, 0, func(dev string, id [16]byte, _ time.Time) error {
		out = append(out, fmt.Sprintf("%s/%d", dev, binary.BigEndian.Uint64(id[8:])))
		return nil
	})
	if err != nil {
		t.Fatalf("Seen: %v", err)
	}
	slices.Sort(out)
	return out
}

// sameRecord compares what the outbox stores of a Record.
func sameRecord(a, b *outbox.Record) bool {
	return a.Seq == b.Seq && a.DeviceID == b.DeviceID && a.MessageID == b.MessageID && a.Timestamp == b.Timestamp &&
		bytes.Equal(a.Payload, b.Payload) && a.ReceivedAt.Equal(b.ReceivedAt)
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*outbox.Config)
		wantErr string
	}{
		{"defaults", func(*outbox.Config) {}, ""},
		{"synchronous normal, any case", func(c *outbox.Config) { c.Synchronous = "NORMAL" }, ""},
		{"no path", func(c *outbox.Config) { c.Path = "" }, "outbox.path"},
		{"max_pending zero", func(c *outbox.Config) { c.MaxPending = 0 }, "outbox.max_pending"},
		{"batch_max zero", func(c *outbox.Config) { c.BatchMax = 0 }, "outbox.batch_max"},
		{"batch_max too big", func(c *outbox.Config) { c.BatchMax = 10001 }, "outbox.batch_max"},
		{"prune_interval zero", func(c *outbox.Config) { c.PruneInterval = 0 }, "outbox.prune_interval"},
		{"synchronous off", func(c *outbox.Config) { c.Synchronous = "off" }, "outbox.synchronous"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := outbox.DefaultConfig()
			tc.edit(&cfg)
			err := cfg.Validate()
			if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestOpenMissingDirectory(t *testing.T) {
	cfg := outbox.DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "no", "such", "dir", "outbox.db")
	if s, err := Open(bg(), cfg); err == nil {
		s.Close()
		t.Fatal("Open in a missing directory succeeded")
	}
}

// TestStoreSurvivesReopen: rows, their exact bytes and their ids are still
// there after the database is closed and opened again, whatever the
// synchronous setting.
func TestStoreSurvivesReopen(t *testing.T) {
	for _, sync := range []string{"full", "normal", ""} {
		t.Run("synchronous="+sync, func(t *testing.T) {
			cfg := testConfig(t, func(c *outbox.Config) { c.Synchronous = sync })
			s, err := Open(bg(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			recs := []*outbox.Record{rec("a", 1, t0.Add(time.Hour)), rec("b", 2, t0.Add(time.Hour)), rec("a", 3, t0.Add(time.Hour))}
			recs[1].Payload = []byte("{\"bin\": \"\x00\xff\", \"ü\": [ 1 ,2 ]}\n")
			recs[2].ReceivedAt = t0.Add(1500 * time.Millisecond)
			if err := s.Insert(bg(), recs); err != nil {
				t.Fatal(err)
			}
			for i := 1; i < len(recs); i++ {
				if recs[i].Seq != recs[i-1].Seq+1 {
					t.Fatalf("Insert set seqs %d, %d: want consecutive", recs[i-1].Seq, recs[i].Seq)
				}
			}
			s.Close()

			s = openStore(t, cfg)
			got, err := s.Pending(bg(), 0)
			if err != nil || len(got) != len(recs) {
				t.Fatalf("Pending after reopen: %d rows, %v", len(got), err)
			}
			for i := range recs {
				if !sameRecord(got[i], recs[i]) {
					t.Errorf("row %d after reopen = %+v, want %+v", i, got[i], recs[i])
				}
			}
			if seqs := pendingSeqs(t, s, recs[0].Seq); !slices.Equal(seqs, []int64{recs[1].Seq, recs[2].Seq}) {
				t.Errorf("Pending(after first) = %v", seqs)
			}
			if ids := seenIDs(t, s, t0); !slices.Equal(ids, []string{"a/1", "a/3", "b/2"}) {
				t.Errorf("seen after reopen = %v", ids)
			}
		})
	}
}

func TestStoreDelete(t *testing.T) {
	tests := []struct {
		name     string
		rows     int
		del      func(seqs []int64) []int64 // which to delete
		wantLeft int
	}{
		{"nothing", 3, func([]int64) []int64 { return nil }, 3},
		{"some", 5, func(s []int64) []int64 { return []int64{s[1], s[3]} }, 3},
		{"all", 4, func(s []int64) []int64 { return s }, 0},
		{"unknown seqs are ignored", 2, func([]int64) []int64 { return []int64{9999, -1} }, 2},
		{"more than one statement's worth", 1234, func(s []int64) []int64 { return s[:1200] }, 34},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, testConfig(t, nil))
			recs := make([]*outbox.Record, tc.rows)
			for i := range recs {
				recs[i] = rec("d", i, t0.Add(time.Minute))
			}
			insert(t, s, recs...)
			all := pendingSeqs(t, s, 0)
			del := tc.del(all)
			if err := s.Delete(bg(), del); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			left := pendingSeqs(t, s, 0)
			if len(left) != tc.wantLeft {
				t.Fatalf("%d rows left, want %d", len(left), tc.wantLeft)
			}
			for _, seq := range left {
				if slices.Contains(del, seq) {
					t.Errorf("deleted row %d still pending", seq)
				}
			}
		})
	}
}

// TestStoreSeenWindow: ids come back while their expiry is at or after
// now, and PruneSeen deletes exactly those that expired before now. Expiry
// has whole-second precision.
func TestStoreSeenWindow(t *testing.T) {
	base := time.Unix(1727712000, 0)
	expiries := map[int]time.Duration{1: -10 * time.Second, 2: -time.Second, 3: 0, 4: time.Second, 5: 5 * time.Minute}
	tests := []struct {
		name       string
		now        time.Duration // after base
		wantSeen   []string
		wantPruned int64
	}{
		{"long before", -time.Hour, []string{"d/1", "d/2", "d/3", "d/4", "d/5"}, 0},
		{"now", 0, []string{"d/3", "d/4", "d/5"}, 2},
		{"sub-second later counts as the same second", 999 * time.Millisecond, []string{"d/3", "d/4", "d/5"}, 2},
		{"one second later", time.Second, []string{"d/4", "d/5"}, 3},
		{"past every expiry", 5*time.Minute + time.Second, nil, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, nil)
			s := openStore(t, cfg)
			for n, d := range expiries {
				r := rec("d", n, base.Add(d))
				r.Timestamp = fmt.Sprint(base.Add(d).Unix() - 300) // stored with a 300 s skew
				insert(t, s, r)
			}
			now := base.Add(tc.now)
			if got := seenIDs(t, s, now); !slices.Equal(got, tc.wantSeen) {
				t.Fatalf("Seen(now) = %v, want %v", got, tc.wantSeen)
			}
			n, err := s.PruneSeen(bg(), now, 0)
			if err != nil || n != tc.wantPruned {
				t.Fatalf("PruneSeen = %d, %v; want %d", n, err, tc.wantPruned)
			}
			// Pruned ids are gone for good, even for an earlier now, and
			// the rest survive a reopen.
			s.Close()
			s = openStore(t, cfg)
			if got := seenIDs(t, s, base.Add(-24*time.Hour)); !slices.Equal(got, tc.wantSeen) {
				t.Errorf("after prune and reopen: %v, want %v", got, tc.wantSeen)
			}
			if n := count(t, s); n != len(expiries) {
				t.Errorf("pruning seen ids removed outbox rows: %d left", n)
			}
		})
	}
}

// TestStoreSeenManyInOneInsert: one Insert of more ids than fit in one
// INSERT statement records every one, with its expiry.
func TestStoreSeenManyInOneInsert(t *testing.T) {
	s := openStore(t, testConfig(t, nil))
	const n = 3*seenChunk + 5
	recs := make([]*outbox.Record, n)
	for i := range recs {
		recs[i] = rec(fmt.Sprint("dev", i%7), i, t0.Add(time.Duration(i)*time.Second).Truncate(time.Second))
	}
	insert(t, s, recs...)
	got := map[string]time.Time{}
	err := s.Seen(bg(), time.Unix(0, 0), 0, func(dev string, id [16]byte, exp time.Time) error {
		got[fmt.Sprintf("%s/%x", dev, id)] = exp
		return nil
	})
	if err != nil || len(got) != n {
		t.Fatalf("Seen: %d ids, %v; want %d", len(got), err, n)
	}
	for _, r := range recs {
		if exp, ok := got[fmt.Sprintf("%s/%x", r.DeviceID, r.ID)]; !ok || !exp.Equal(r.Expires) {
			t.Fatalf("id of %s: expiry %v (found %v), want %v", r.MessageID, exp, ok, r.Expires)
		}
	}
}

func TestStoreSeenCallbackErrorStops(t *testing.T) {
	s := openStore(t, testConfig(t, nil))
	insert(t, s, rec("d", 1, t0.Add(time.Hour)), rec("d", 2, t0.Add(time.Hour)))
	stop := errors.New("replay store full")
	calls := 0
	err := s.Seen(bg(), t0, 0, func(string, [16]byte, time.Time) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Seen = %v after %d calls, want the callback's error after 1", err, calls)
	}
}

func TestStoreBury(t *testing.T) {
	s := openStore(t, testConfig(t, nil))
	recs := []*outbox.Record{rec("a", 1, t0), rec("b", 2, t0), rec("c", 3, t0)}
	insert(t, s, recs...)
	deadAt := time.Unix(1727799999, 0)
	if err := s.Bury(bg(), recs[1].Seq, 50, "backend answered 503", deadAt); err != nil {
		t.Fatalf("Bury: %v", err)
	}
	if seqs := pendingSeqs(t, s, 0); !slices.Equal(seqs, []int64{recs[0].Seq, recs[2].Seq}) {
		t.Errorf("pending after Bury = %v", seqs)
	}
	dead, err := s.DeadLetters(bg())
	if err != nil || len(dead) != 1 {
		t.Fatalf("DeadLetters = %d, %v; want 1", len(dead), err)
	}
	d := dead[0]
	if !sameRecord(&d.Record, recs[1]) || d.Attempts != 50 || d.LastError != "backend answered 503" || !d.DeadAt.Equal(deadAt) {
		t.Errorf("dead letter = %+v, want %+v with 50 attempts, the error and %v", d, recs[1], deadAt)
	}
	// A seq not in the outbox (already settled) changes nothing.
	if err := s.Bury(bg(), 9999, 1, "x", deadAt); err != nil {
		t.Fatalf("Bury of an unknown seq: %v", err)
	}
	if dead, _ := s.DeadLetters(bg()); len(dead) != 1 || count(t, s) != 2 {
		t.Errorf("Bury of an unknown seq: %d dead letters, %d rows; want 1, 2", len(dead), count(t, s))
	}
}

func TestStoreRetryAndDropDead(t *testing.T) {
	tests := []struct {
		name      string
		retry     bool
		pick      []int // indexes of the buried rows; nil means all
		want      int   // rows affected
		wantDead  []int // indexes still dead
		wantRetry []int // indexes back in the outbox, in this order
	}{
		{"retry all", true, nil, 3, nil, []int{0, 1, 2}},
		{"retry some", true, []int{2, 0}, 2, []int{1}, []int{0, 2}},
		{"retry unknown", true, []int{-1}, 0, []int{0, 1, 2}, nil},
		{"drop all", false, nil, 3, nil, nil},
		{"drop some", false, []int{1}, 1, []int{0, 2}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, testConfig(t, nil))
			live := rec("live", 0, t0)
			buried := []*outbox.Record{rec("a", 1, t0), rec("b", 2, t0), rec("c", 3, t0)}
			insert(t, s, append([]*outbox.Record{live}, buried...)...)
			for _, r := range buried {
				if err := s.Bury(bg(), r.Seq, 5, "gave up", t0); err != nil {
					t.Fatal(err)
				}
			}
			var seqs []int64
			for _, i := range tc.pick {
				if i < 0 {
					seqs = append(seqs, 4242)
				} else {
					seqs = append(seqs, buried[i].Seq)
				}
			}
			before := time.Now()
			op := s.DropDead
			if tc.retry {
				op = s.RetryDead
			}
			n, err := op(bg(), seqs)
			if err != nil || n != tc.want {
				t.Fatalf("= %d, %v; want %d", n, err, tc.want)
			}
			dead, err := s.DeadLetters(bg())
			if err != nil {
				t.Fatal(err)
			}
			var deadSeqs, wantDead []int64
			for _, d := range dead {
				deadSeqs = append(deadSeqs, d.Seq)
			}
			for _, i := range tc.wantDead {
				wantDead = append(wantDead, buried[i].Seq)
			}
			if !slices.Equal(deadSeqs, wantDead) {
				t.Errorf("dead letters left %v, want %v", deadSeqs, wantDead)
			}
			rows, err := s.Pending(bg(), live.Seq)
			if err != nil || len(rows) != len(tc.wantRetry) {
				t.Fatalf("outbox rows after the live one: %d, %v; want %d", len(rows), err, len(tc.wantRetry))
			}
			for k, i := range tc.wantRetry {
				r, want := rows[k], buried[i]
				// A new row: a new seq above every old one, the same
				// message, and received now, so max_age starts again.
				if r.Seq <= buried[len(buried)-1].Seq || r.DeviceID != want.DeviceID || r.MessageID != want.MessageID ||
					r.Timestamp != want.Timestamp || !bytes.Equal(r.Payload, want.Payload) {
					t.Errorf("retried row %d = %+v, want a new row for %+v", k, r, want)
				}
				if r.ReceivedAt.Before(before.Truncate(time.Millisecond)) || r.ReceivedAt.After(time.Now()) {
					t.Errorf("retried row received at %v, want the time of the retry", r.ReceivedAt)
				}
			}
		})
	}
}

// TestStoreSeenWiderWindow: ids stored under a 300 s skew and read back
// under a 600 s one (max_clock_skew raised across a restart) live until
// their timestamp + 600 s: Seen returns them with that expiry, and
// PruneSeen keeps them until then. A narrower window never shortens the
// stored expiry.
func TestStoreSeenWiderWindow(t *testing.T) {
	base := time.Unix(1727712000, 0)
	s := openStore(t, testConfig(t, nil))
	r := rec("d", 1, base.Add(300*time.Second)) // accepted with timestamp base, skew 300 s
	r.Timestamp = fmt.Sprint(base.Unix())
	insert(t, s, r)
	expiry := func(now time.Time, window time.Duration) (time.Time, bool) {
		var got time.Time
		found := false
		if err := s.Seen(bg(), now, window, func(_ string, _ [16]byte, e time.Time) error { got, found = e, true; return nil }); err != nil {
			t.Fatal(err)
		}
		return got, found
	}
	for _, tc := range []struct {
		name     string
		now      time.Duration
		window   time.Duration
		want     time.Duration // expiry after base
		wantSeen bool
	}{
		{"same window", 100 * time.Second, 300 * time.Second, 300 * time.Second, true},
		{"narrower window keeps the stored expiry", 100 * time.Second, 60 * time.Second, 300 * time.Second, true},
		{"wider window extends it", 100 * time.Second, 600 * time.Second, 600 * time.Second, true},
		{"wider window, past the stored expiry", 400 * time.Second, 600 * time.Second, 600 * time.Second, true},
		{"past both", 601 * time.Second, 600 * time.Second, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := expiry(base.Add(tc.now), tc.window)
			if ok != tc.wantSeen || (ok && !got.Equal(base.Add(tc.want))) {
				t.Fatalf("Seen = %v (found %v), want %v (found %v)", got, ok, base.Add(tc.want), tc.wantSeen)
			}
		})
	}
	if n, err := s.PruneSeen(bg(), base.Add(400*time.Second), 600*time.Second); err != nil || n != 0 {
		t.Fatalf("PruneSeen inside the wider window = %d, %v; want 0", n, err)
	}
	if n, err := s.PruneSeen(bg(), base.Add(601*time.Second), 600*time.Second); err != nil || n != 1 {
		t.Fatalf("PruneSeen past the wider window = %d, %v; want 1", n, err)
	}
}

// TestStoreSeenHorizon: the horizon starts at 0, rises to now - window
// when a prune deletes ids, never falls, and survives a reopen.
func TestStoreSeenHorizon(t *testing.T) {
	base := time.Unix(1727712000, 0)
	cfg := testConfig(t, nil)
	s := openStore(t, cfg)
	horizon := func() int64 {
		h, err := s.SeenHorizon(bg())
		if err != nil {
			t.Fatal(err)
		}
		return h.Unix()
	}
	if horizon() != 0 {
		t.Fatalf("fresh horizon = %d", horizon())
	}
	r := rec("d", 1, base.Add(300*time.Second))
	r.Timestamp = fmt.Sprint(base.Unix())
	insert(t, s, r)
	if _, err := s.PruneSeen(bg(), base.Add(100*time.Second), 300*time.Second); err != nil || horizon() != 0 {
		t.Fatalf("prune that deleted nothing moved the horizon to %d (%v)", horizon(), err)
	}
	if n, err := s.PruneSeen(bg(), base.Add(400*time.Second), 300*time.Second); err != nil || n != 1 {
		t.Fatalf("PruneSeen = %d, %v", n, err)
	}
	if want := base.Unix() + 100; horizon() != want {
		t.Fatalf("horizon = %d, want %d", horizon(), want)
	}
	r2 := rec("d", 2, base.Add(400*time.Second))
	r2.Timestamp = fmt.Sprint(base.Unix() + 100)
	insert(t, s, r2)
	// A narrower window: cut at +420 s, r2 (timestamp +100 s, expiry +400 s) goes.
	if n, err := s.PruneSeen(bg(), base.Add(450*time.Second), 30*time.Second); err != nil || n != 1 {
		t.Fatalf("PruneSeen = %d, %v", n, err)
	}
	// The clock stepped back: a prune with an earlier cut keeps the horizon.
	r3 := rec("d", 3, base.Add(-700*time.Second))
	r3.Timestamp = fmt.Sprint(base.Unix() - 1000)
	insert(t, s, r3)
	if n, err := s.PruneSeen(bg(), base, 300*time.Second); err != nil || n != 1 {
		t.Fatalf("PruneSeen = %d, %v", n, err)
	}
	s.Close()
	s = openStore(t, cfg)
	if want := base.Unix() + 420; horizon() != want {
		t.Fatalf("horizon after reopen = %d, want %d", horizon(), want)
	}
}

// TestStoreStats: the oldest pending row's receive time (zero when empty)
// and the dead-letter count, as /metrics reports them.
func TestStoreStats(t *testing.T) {
	s := openStore(t, testConfig(t, nil))
	if st, err := s.Stats(bg()); err != nil || !st.Oldest.IsZero() || st.DeadLetters != 0 {
		t.Fatalf("empty outbox.Stats = %+v, %v; want zero", st, err)
	}
	recs := []*outbox.Record{rec("a", 1, t0), rec("b", 2, t0), rec("c", 3, t0)}
	for i, r := range recs {
		r.ReceivedAt = t0.Add(time.Duration(i) * time.Second)
	}
	insert(t, s, recs...)
	if err := s.Bury(bg(), recs[0].Seq, 3, "backend answered 503", t0); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats(bg())
	if err != nil {
		t.Fatal(err)
	}
	if want := recs[1].ReceivedAt.Truncate(time.Millisecond); !st.Oldest.Equal(want) || st.DeadLetters != 1 {
		t.Errorf("outbox.Stats = %+v, want oldest %v (the first row still pending) and 1 dead letter", st, want)
	}
}
