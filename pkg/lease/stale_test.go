package lease

import (
	"context"
	"testing"

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
