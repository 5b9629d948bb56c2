package sqlitestore

import (
	"slices"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/lease"
)

// settleLog is a Writer that records what Leases hands it.
type settleLog struct {
	settled  []int64
	released int
}

func (s *settleLog) Settle(seq int64) { s.settled = append(s.settled, seq) }
func (s *settleLog) Release(n int)    { s.released += n }

// TestLeasesInProcess: the SQLite engine answers claims from what its
// Store committed: a device's rows in seq order, one owner at a time, a
// new epoch per claim; a finished row leaves through the writer's next
// commit, a buried one at once; a stale owner changes nothing; a drained
// device with rows left is claimable again, and an expired lease too.
func TestLeasesInProcess(t *testing.T) {
	cfg := testConfig(t, nil)
	s := openStore(t, cfg)
	w := &settleLog{}
	now := t0
	l := s.Leases(w, 1<<20, func() time.Time { return now })
	if _, err := s.Commit(bg(), append(recs("a", 1, 3), recs("b", 1, 1)...), nil, 0); err != nil {
		t.Fatal(err)
	}
	got, _ := l.Claim(bg(), "A", 10, 2, time.Minute)
	if len(got) != 2 || got[0].Device != "a" || len(got[0].Rows) != 2 || got[1].Device != "b" {
		t.Fatalf("claimed %+v, want a (2 rows) then b", got)
	}
	if again, _ := l.Claim(bg(), "B", 10, 10, time.Minute); len(again) != 0 {
		t.Fatalf("a second owner claimed %+v while both are leased", again)
	}
	a, b := got[0], got[1]
	done := []lease.Done{
		{Lease: a.Lease, Seq: a.Rows[0].Seq},
		{Lease: b.Lease, Seq: b.Rows[0].Seq, Dead: &lease.Dead{Attempts: 3, LastError: "gave up", At: t0}},
	}
	stale, err := l.Finish(bg(), "A", done, []lease.Lease{b.Lease})
	if err != nil || stale != 0 {
		t.Fatal(stale, err)
	}
	if !slices.Equal(w.settled, []int64{a.Rows[0].Seq}) || w.released != 1 {
		t.Fatalf("writer got deletes %v and %d released slots, want [%d] and 1 (the buried row)", w.settled, w.released, a.Rows[0].Seq)
	}
	if dl, _ := s.DeadLetters(bg()); len(dl) != 1 || dl[0].DeviceID != "b" {
		t.Fatalf("dead letters %+v", dl)
	}
	// A stale epoch changes nothing.
	old := lease.Lease{Device: "a", Epoch: a.Epoch - 1}
	if stale, _ := l.Finish(bg(), "A", []lease.Done{{Lease: old, Seq: a.Rows[1].Seq}}, []lease.Lease{old}); stale != 2 {
		t.Fatalf("a stale finish: %d refused, want 2", stale)
	}
	// The lease runs out: another owner takes a over at the next epoch,
	// from its oldest row left, and the first owner's Finish is stale.
	now = now.Add(time.Minute + expiredScan)
	taken, _ := l.Claim(bg(), "B", 10, 10, time.Minute)
	if len(taken) != 1 || taken[0].Device != "a" || taken[0].Epoch != a.Epoch+1 || len(taken[0].Rows) != 2 || taken[0].Rows[0].Seq != a.Rows[1].Seq {
		t.Fatalf("after expiry B took %+v", taken)
	}
	if stale, _ := l.Finish(bg(), "A", []lease.Done{{Lease: a.Lease, Seq: a.Rows[1].Seq}}, nil); stale != 1 {
		t.Fatalf("the first owner's finish after the takeover: %d refused, want 1", stale)
	}
	if kept, _ := l.Renew(bg(), "A", []lease.Lease{a.Lease}, time.Minute); len(kept) != 0 {
		t.Fatalf("the first owner renewed %v", kept)
	}
	// B drains with a row left: released, claimable again.
	if _, err := l.Finish(bg(), "B", []lease.Done{{Lease: taken[0].Lease, Seq: taken[0].Rows[0].Seq}}, []lease.Lease{taken[0].Lease}); err != nil {
		t.Fatal(err)
	}
	if next, _ := l.Claim(bg(), "A", 10, 10, time.Minute); len(next) != 1 || len(next[0].Rows) != 1 || next[0].Rows[0].Seq != taken[0].Rows[1].Seq {
		t.Fatalf("after the drain A claimed %+v", next)
	}
}
