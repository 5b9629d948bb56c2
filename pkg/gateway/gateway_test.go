package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/replay"
)

// TestInflightReplay: a redelivered copy of an accepted but not yet durable
// message is held and acked with the original; once durable, a copy is an
// ordinary replay.
func TestInflightReplay(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	r := newInflightReplay(replay.New(replay.Config{MaxEntries: 100}))
	id := [16]byte{7}
	exp := now.Add(time.Minute)

	if dup, err := r.Record(ctx, "d1", id, exp, now); dup || err != nil {
		t.Fatalf("first Record = %v, %v", dup, err)
	}
	if dup, err := r.Record(ctx, "d1", id, exp, now); !dup || err != nil {
		t.Fatalf("second Record = %v, %v; want a duplicate", dup, err)
	}
	if r.addAck("d2", id, func() {}) {
		t.Fatal("addAck for another device's id succeeded")
	}
	acked := 0
	for range 2 {
		if !r.addAck("d1", id, func() { acked++ }) {
			t.Fatal("addAck for an in-flight id failed")
		}
	}
	acks := r.durable("d1", id)
	if len(acks) != 2 {
		t.Fatalf("durable returned %d acks, want 2", len(acks))
	}
	for _, a := range acks {
		a()
	}
	if acked != 2 {
		t.Fatalf("acked %d", acked)
	}
	if r.addAck("d1", id, func() {}) {
		t.Fatal("addAck after durable succeeded")
	}
	if got := r.durable("d1", id); got != nil {
		t.Fatalf("durable twice returned %v", got)
	}
	if dup, _ := r.Record(ctx, "d1", id, exp, now); !dup {
		t.Fatal("a durable id was accepted again")
	}
}
