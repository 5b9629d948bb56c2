package pgstore

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/outbox"
)

func counterRec(dev string, c int64) *outbox.Record {
	return &outbox.Record{DeviceID: dev, MessageID: "m-" + strconv.FormatInt(c, 10), Timestamp: outbox.CounterTimestamp([]byte(strconv.FormatInt(c, 10))),
		ID: outbox.CounterID(c), Payload: []byte(`{}`), ReceivedAt: time.Now()}
}

// TestCounterBound: a counter at or below the device's bound is refused
// (Refusal.Counter), in one commit and across commits, and the bound is
// kept; a timestamp-mode record beside it is unaffected; ResetCounter sets
// it back to 0.
func TestCounterBound(t *testing.T) {
	ctx := context.Background()
	o := openTest(t).Outbox(0)
	res, err := o.Commit(ctx, []*outbox.Record{counterRec("c1", 5), counterRec("c1", 5), counterRec("c1", 3), counterRec("c1", 7), rec("t1", 1)}, nil, -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Refused) != 2 || !res.Refused[0].Counter || !res.Refused[1].Counter {
		t.Fatalf("refused %+v, want the second 5 and the 3, as counter replays", res.Refused)
	}
	if b, err := o.CounterBound(ctx, "c1"); err != nil || b != 7 {
		t.Fatalf("bound = %d, %v; want 7", b, err)
	}
	for _, c := range []int64{7, 6, 1} {
		res, err := o.Commit(ctx, []*outbox.Record{counterRec("c1", c)}, nil, -1)
		if err != nil || len(res.Refused) != 1 || !res.Refused[0].Counter {
			t.Fatalf("counter %d at or below 7: %+v, %v", c, res.Refused, err)
		}
	}
	if res, err := o.Commit(ctx, []*outbox.Record{counterRec("c1", 8)}, nil, -1); err != nil || len(res.Refused) != 0 {
		t.Fatalf("counter 8: %+v, %v", res.Refused, err)
	}
	if n, err := o.Count(ctx); err != nil || n != 4 {
		t.Fatalf("outbox rows = %d, %v; want 4 (5, 7, 8 and the timestamp-mode one)", n, err)
	}
	if old, err := o.ResetCounter(ctx, "c1", 0); err != nil || old != 8 {
		t.Fatalf("ResetCounter = %d, %v; want 8", old, err)
	}
	if res, err := o.Commit(ctx, []*outbox.Record{counterRec("c1", 1)}, nil, -1); err != nil || len(res.Refused) != 0 {
		t.Fatalf("counter 1 after the reset: %+v, %v", res.Refused, err)
	}
}

// TestCounterAcrossGateways: two gateways commit copies of the same
// counters at once; each counter is accepted exactly once.
func TestCounterAcrossGateways(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	a, b := db.Outbox(0), db.Outbox(0)
	const n = 200
	won := make([]int, n+1)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, o := range []*Outbox{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := int64(1); c <= n; c++ {
				r := counterRec("both", c)
				res, err := o.Commit(ctx, []*outbox.Record{r}, nil, -1)
				if err != nil {
					t.Error(err)
					return
				}
				if len(res.Refused) == 0 {
					mu.Lock()
					won[c]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	for c := 1; c <= n; c++ {
		if won[c] != 1 {
			t.Fatalf("counter %d accepted %d times, want once", c, won[c])
		}
	}
	if cnt, err := a.Count(ctx); err != nil || cnt != n {
		t.Fatalf("outbox rows = %d, %v; want %d", cnt, err, n)
	}
}
