package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
)

// rowsOf returns the rows of claims, in order.
func rowsOf(claims []lease.Claim) []*outbox.Record {
	var out []*outbox.Record
	for _, c := range claims {
		out = append(out, c.Rows...)
	}
	return out
}

// doneOf returns rows as settled under the leases of claims.
func doneOf(claims []lease.Claim, rows []*outbox.Record) []lease.Done {
	epoch := map[string]int64{}
	for _, c := range claims {
		epoch[c.Device] = c.Epoch
	}
	var out []lease.Done
	for _, r := range rows {
		out = append(out, lease.Done{Lease: lease.Lease{Device: r.DeviceID, Epoch: epoch[r.DeviceID]}, Seq: r.Seq})
	}
	return out
}

// leasesOf returns the leases of claims.
func leasesOf(claims []lease.Claim) []lease.Lease {
	var out []lease.Lease
	for _, c := range claims {
		out = append(out, c.Lease)
	}
	return out
}

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
	if err != nil || len(rowsOf(got)) != 4 {
		t.Fatalf("claim: %d rows, %v", len(rowsOf(got)), err)
	}
	if stale, err := a.Finish(ctx, "ga", doneOf(got, rowsOf(got)), leasesOf(got)); err != nil || stale != 0 {
		t.Fatal(stale, err)
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
	claimA, err := o.Claim(ctx, "A", 10, 2, 2*time.Second)
	got := rowsOf(claimA)
	if err != nil || len(got) != 2 || got[0].DSeq != 1 || got[1].DSeq != 2 {
		t.Fatalf("A claimed %v, %v", got, err)
	}
	if other, err := o.Claim(ctx, "B", 10, 2, time.Minute); err != nil || len(other) != 0 {
		t.Fatalf("B claimed %d devices of a leased device, %v", len(other), err)
	}
	// A settles row 1 only, and dies.
	if _, err := o.Finish(ctx, "A", doneOf(claimA, got[:1]), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond)
	claimB, err := o.Claim(ctx, "B", 10, 10, time.Minute)
	taken := rowsOf(claimB)
	if err != nil || len(taken) != 4 || taken[0].DSeq != 2 {
		t.Fatalf("B took over %d rows (first %v), %v; want 4 from dseq 2", len(taken), taken, err)
	}
	if claimB[0].Epoch <= claimA[0].Epoch {
		t.Fatalf("B's epoch %d not above A's %d", claimB[0].Epoch, claimA[0].Epoch)
	}
	if kept, err := o.Renew(ctx, "A", leasesOf(claimA), time.Minute); err != nil || len(kept) != 0 {
		t.Fatalf("A renewed %v, %v after losing the lease", kept, err)
	}
	// B drains: the lease is released, and a new row is claimable again.
	if _, err := o.Finish(ctx, "B", doneOf(claimB, taken), leasesOf(claimB)); err != nil {
		t.Fatalf("finish: %v", err)
	}
	if _, err := o.Commit(ctx, []*outbox.Record{rec("d", 9)}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if again, err := o.Claim(ctx, "A", 10, 10, time.Minute); err != nil || len(rowsOf(again)) != 1 || rowsOf(again)[0].DSeq != 6 {
		t.Fatalf("claim after release: %v %v", again, err)
	}
}

// TestFencing: a gateway whose lease was taken over (it paused past its
// lease, and another claimed the device) can change nothing: its Finish
// deletes no row and buries none, its drain releases nothing, its Renew
// is refused; all of it counted as stale. The holder of the current epoch
// is unaffected.
func TestFencing(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	o := db.Outbox(0)
	if _, err := o.Commit(ctx, []*outbox.Record{rec("d", 1), rec("d", 2)}, nil, 0); err != nil {
		t.Fatal(err)
	}
	claimA, err := o.Claim(ctx, "A", 10, 10, 2*time.Second)
	if err != nil || len(claimA) != 1 {
		t.Fatal(claimA, err)
	}
	time.Sleep(2100 * time.Millisecond) // A pauses past its lease
	claimB, err := o.Claim(ctx, "B", 10, 10, time.Minute)
	if err != nil || len(rowsOf(claimB)) != 2 {
		t.Fatal(claimB, err)
	}
	rows := rowsOf(claimA)
	done := doneOf(claimA, rows)
	done[1].Dead = &lease.Dead{Attempts: 1, LastError: "x", At: time.Now()}
	stale, err := o.Finish(ctx, "A", done, leasesOf(claimA))
	if err != nil || stale != 3 {
		t.Fatalf("A's stale finish: stale=%d err=%v, want 3 refused", stale, err)
	}
	if n, _ := o.Count(ctx); n != 2 {
		t.Fatalf("%d rows left after A's stale finish, want 2", n)
	}
	if dl, _ := o.DeadLetters(ctx); len(dl) != 0 {
		t.Fatalf("A's stale finish buried %d rows", len(dl))
	}
	if kept, _ := o.Renew(ctx, "B", leasesOf(claimB), time.Minute); len(kept) != 1 {
		t.Fatalf("B lost its lease to A's stale drain: kept %v", kept)
	}
	// A claims again later (a new epoch): its old epoch is still refused.
	if stale, err := o.Finish(ctx, "B", doneOf(claimB, rowsOf(claimB)), leasesOf(claimB)); err != nil || stale != 0 {
		t.Fatal(stale, err)
	}
	if n, _ := o.Count(ctx); n != 0 {
		t.Fatalf("%d rows left after B's finish", n)
	}
}

// TestReplayHorizonAcrossGateways is finding 1 of issue 15 at the
// database: gateway A (max_clock_skew 1m) accepted a message stamped
// now−50s; pruning must not open a window in which gateway B, with a
// longer window or a clock behind, commits a copy. Pruning uses the
// database's clock and the fleet's window, whatever the caller passes,
// and a commit refuses a record at or below the horizon.
func TestReplayHorizonAcrossGateways(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	a, b := db.Outbox(0), db.Outbox(0)
	if err := a.FreshnessWindow(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	var werr *WindowError
	if err := b.FreshnessWindow(ctx, 5*time.Minute); !errors.As(err, &werr) || werr.Fleet != time.Minute || werr.Gateway != 5*time.Minute {
		t.Fatalf("a gateway with another window: %v, want a WindowError naming 5m0s and 1m0s", err)
	}
	now := time.Now()
	old := rec("d", 1)
	old.Timestamp = fmt.Sprint(now.Add(-50 * time.Second).Unix())
	old.Expires = now.Add(10 * time.Second)
	if res, err := a.Commit(ctx, []*outbox.Record{old}, nil, 0); err != nil || len(res.Refused) != 0 {
		t.Fatal(res, err)
	}
	// A gateway whose clock runs 20 s ahead prunes: by its own clock and
	// window the id is out; by the database's it is not.
	if n, err := a.PruneSeen(ctx, now.Add(20*time.Second), time.Minute); err != nil || n != 0 {
		t.Fatalf("prune with a clock ahead deleted %d ids (%v): the id of a fresh message", n, err)
	}
	// The operator raises the fleet's window; the id is still there, so a
	// copy is refused by the unique key...
	if _, err := a.SetFreshnessWindow(ctx, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	cp := rec("d", 1)
	cp.Timestamp = old.Timestamp
	if res, err := b.Commit(ctx, []*outbox.Record{cp}, nil, 0); err != nil || len(res.Refused) != 1 || res.Refused[0].Old {
		t.Fatalf("copy: %+v %v, want refused as a replay", res.Refused, err)
	}
	// ...and once the id is pruned (moved into the past here), the horizon
	// refuses the copy instead.
	if _, err := db.Pool.Exec(ctx, `UPDATE seen SET ts = ts - 400, expires = expires - 400`); err != nil {
		t.Fatal(err)
	}
	if n, err := b.PruneSeen(ctx, time.Time{}, 0); err != nil || n != 1 {
		t.Fatalf("prune: %d, %v; want the id pruned", n, err)
	}
	cp2 := rec("d", 1)
	cp2.Timestamp = fmt.Sprint(now.Add(-400 * time.Second).Unix())
	if res, err := b.Commit(ctx, []*outbox.Record{cp2}, nil, 0); err != nil || len(res.Refused) != 1 || !res.Refused[0].Old {
		t.Fatalf("copy after the prune: %+v %v, want refused below the horizon", res.Refused, err)
	}
	if n, _ := a.Count(ctx); n != 1 {
		t.Fatalf("%d rows, want only the original", n)
	}
}

// TestLastAccepted: device show's "last accepted" on the shared database:
// the newest pending row's receive time (or replay id), any gateway's;
// zero for a device with nothing on record.
func TestLastAccepted(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	o := db.Outbox(0)
	r := rec("d", 1)
	r.ReceivedAt = time.UnixMilli(r.ReceivedAt.UnixMilli())
	if _, err := o.Commit(ctx, []*outbox.Record{r}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if got, err := o.LastAccepted(ctx, "d"); err != nil || !got.Equal(r.ReceivedAt) {
		t.Fatalf("last accepted of d = %v, %v; want %v", got, err, r.ReceivedAt)
	}
	if got, err := o.LastAccepted(ctx, "other"); err != nil || !got.IsZero() {
		t.Fatalf("last accepted of a device with nothing on record = %v, %v", got, err)
	}
}
