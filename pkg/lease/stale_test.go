package lease

import (
	"context"
	"testing"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// TestForwarderStaleFinishDoesNotAdvance: a settled row whose Finish the
// store refused as stale (the lease moved on while the database was out of
// reach, and nobody has noticed at renewal yet) is still in the outbox, so
// the device's next row must not go into the dispatcher: a re-claim would
// queue the refused row behind it, and X-Iotgw-Seq would go back at the
// backend (found by the simulation: go test ./pkg/lease/sim -run TestSim -seed=2369, with the fix reverted).
func TestForwarderStaleFinishDoesNotAdvance(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{rows("d", 1, 2, 3)}}
	s, disp := newTestForwarder(t, st)
	ctx := context.Background()
	s.claim(ctx)
	j := jobOf("d", 1)
	if err := s.admit(j); err != nil {
		t.Fatal(err)
	}
	s.settled(j)
	st.takeOver("d") // another gateway claimed d meanwhile; this one's Finish is refused
	s.finish(ctx)
	if n := disp.Pending(); n != 1 {
		t.Fatalf("%d jobs submitted after a stale Finish, want 1 (row 2 must wait: row 1 was not deleted)", n)
	}
	if s.Held() != 0 {
		t.Fatal("the device whose Finish was refused is still held")
	}
}

// TestForwarderStaleFinishKeepsOthers: one device's Finish refused as
// stale does not stall the other devices finished in the same call: the
// Forwarder renews to learn which lease moved on, drops that device only,
// and the others go on to their next rows.
func TestForwarderStaleFinishKeepsOthers(t *testing.T) {
	st := &fakeStore{claims: [][]*outbox.Record{append(rows("d", 1, 2), rows("e", 3, 4)...)}}
	s, disp := newTestForwarder(t, st)
	ctx := context.Background()
	s.claim(ctx)
	for _, j := range []*forward.Job{jobOf("d", 1), jobOf("e", 3)} {
		j.Epoch = 1
		if err := s.admit(j); err != nil {
			t.Fatal(err)
		}
		s.settled(j)
	}
	st.kept = []string{"d", "e"}
	st.takeOver("d") // d's Finish is refused; e's lease is still this gateway's
	s.finish(ctx)
	if n := disp.Pending(); n != 3 {
		t.Fatalf("%d jobs submitted, want 3 (d's row 1, e's rows 3 and 4; not d's row 2)", n)
	}
	if s.Held() != 1 {
		t.Fatalf("%d devices held, want 1 (e)", s.Held())
	}
}
