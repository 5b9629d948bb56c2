package pgstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
)

func rec(dev string, n int) *outbox.Record {
	var id [16]byte
	copy(id[:], fmt.Sprintf("%-16d", n))
	now := time.Now()
	return &outbox.Record{DeviceID: dev, MessageID: fmt.Sprintf("m-%d", n), Timestamp: fmt.Sprint(now.Unix()), ID: id,
		Payload: []byte(`{}`), ReceivedAt: now, Expires: now.Add(5 * time.Minute)}
}

func openTest(t *testing.T) *DB {
	db, err := Open(context.Background(), pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

// TestCommitReplayAcrossGateways: ten gateways commit the same message at
// once; exactly one commit inserts it, the nine others are refused as
// replays.
func TestCommitReplayAcrossGateways(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, refused := 0, 0
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := db.Outbox(0)
			res, err := o.Commit(ctx, []*outbox.Record{rec("d1", 1)}, nil, 0)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			refused += len(res.Refused)
			won += 1 - len(res.Refused)
		}()
	}
	wg.Wait()
	n, _ := db.Outbox(0).Count(ctx)
	if won != 1 || refused != 9 || n != 1 {
		t.Fatalf("won=%d refused=%d rows=%d, want 1 9 1", won, refused, n)
	}
}

// TestQuotaFleetWide: the per-device quota counts every gateway's rows.
func TestQuotaFleetWide(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	a, b := db.Outbox(3), db.Outbox(3)
	if res, err := a.Commit(ctx, []*outbox.Record{rec("d", 1), rec("d", 2)}, nil, 0); err != nil || len(res.Refused) != 0 {
		t.Fatal(res, err)
	}
	res, err := b.Commit(ctx, []*outbox.Record{rec("d", 3), rec("d", 4), rec("e", 5)}, nil, 0)
	if err != nil || len(res.Refused) != 1 || !res.Refused[0].Quota || res.Refused[0].Rec.MessageID != "m-4" {
		t.Fatalf("refused %+v, %v; want m-4 by quota", res.Refused, err)
	}
	// The refused id was not recorded: a resend after the backlog drains is accepted.
	got, err := a.Claim(ctx, "ga", 10, 10, time.Minute)
	if err != nil || len(got) != 4 {
		t.Fatalf("claim: %d rows, %v", len(got), err)
	}
	if err := a.Finish(ctx, "ga", got, []string{"d", "e"}); err != nil {
		t.Fatal(err)
	}
	if res, err := b.Commit(ctx, []*outbox.Record{rec("d", 4)}, nil, 0); err != nil || len(res.Refused) != 0 {
		t.Fatalf("resend: %+v %v", res.Refused, err)
	}
}

// TestLeaseOneOwner: while gateway A holds a device's lease, B claims
// nothing of it; once A's lease runs out, B takes the rows over, in
// per-device order, and A can no longer renew.
func TestLeaseOneOwner(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	o := db.Outbox(0)
	var recs []*outbox.Record
	for i := range 5 {
		recs = append(recs, rec("d", i))
	}
	if _, err := o.Commit(ctx, recs, nil, 0); err != nil {
		t.Fatal(err)
	}
	got, err := o.Claim(ctx, "A", 10, 2, 2*time.Second)
	if err != nil || len(got) != 2 || got[0].DSeq != 1 || got[1].DSeq != 2 {
		t.Fatalf("A claimed %v, %v", got, err)
	}
	if other, err := o.Claim(ctx, "B", 10, 2, time.Minute); err != nil || len(other) != 0 {
		t.Fatalf("B claimed %d rows of a leased device, %v", len(other), err)
	}
	// A settles row 1 only, and dies.
	if err := o.Finish(ctx, "A", got[:1], nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond)
	taken, err := o.Claim(ctx, "B", 10, 10, time.Minute)
	if err != nil || len(taken) != 4 || taken[0].DSeq != 2 {
		t.Fatalf("B took over %d rows (first %v), %v; want 4 from dseq 2", len(taken), taken, err)
	}
	if kept, err := o.Renew(ctx, "A", []string{"d"}, time.Minute); err != nil || len(kept) != 0 {
		t.Fatalf("A renewed %v, %v after losing the lease", kept, err)
	}
	// B drains: the lease is released, and a new row is claimable again.
	if err := o.Finish(ctx, "B", taken, []string{"d"}); err != nil {
		t.Fatalf("finish: %v", err)
	}
	if _, err := o.Commit(ctx, []*outbox.Record{rec("d", 9)}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if again, err := o.Claim(ctx, "A", 10, 10, time.Minute); err != nil || len(again) != 1 || again[0].DSeq != 6 {
		t.Fatalf("claim after release: %v %v", again, err)
	}
}
