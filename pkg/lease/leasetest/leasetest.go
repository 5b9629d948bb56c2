// Package leasetest is the conformance suite of the storage contract that
// the delivery core relies on (river's riverdrivertest is the model): Run
// drives every behaviour, commit with the replay authority, the per-device
// quota, replay ids and the horizon, claim, renew, finish and release with
// epochs (fencing), lease expiry and dead letters, against one engine.
// Each engine's test opens it fresh for every case; a part the engine does
// not have (SQLite has no leases) is left nil and its cases are skipped.
//
// The real engines (SQLite, PostgreSQL) and the simulation's model
// (memstore) all run it, so the simulation tests the real contract.
package leasetest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// Options are the settings a case opens its engine with.
type Options struct {
	// Quota is outbox.max_pending_per_device (0: off).
	Quota int
	// Window is the fleet-wide freshness window the engine prunes with.
	Window time.Duration
}

// Engine is one engine opened for one case: the parts of the contract it
// has, as functions (so an engine's method names do not matter). Commit
// and Count are required.
type Engine struct {
	// Commit is outbox.Committer.Commit.
	Commit func(ctx context.Context, recs []*outbox.Record) (outbox.Result, error)
	// Count returns how many rows are pending.
	Count func(ctx context.Context) (int, error)
	// ReplayAuthority is set when Commit refuses an id committed before
	// (by any gateway); SQLite's in-memory replay store is its authority
	// instead.
	ReplayAuthority bool
	// QuotaRefusal is set when Commit refuses records past Options.Quota.
	QuotaRefusal bool

	// Leases is the lease contract; nil when rows are not claimed.
	Leases lease.Store
	// Rows lists every pending row, oldest first (payloads may be nil);
	// nil: rows are read by claiming them.
	Rows func(ctx context.Context) ([]*outbox.Record, error)
	// Payload reads row seq's payload back (an error wrapping
	// outbox.ErrNoRow when the row is gone); nil: not checked.
	Payload func(ctx context.Context, seq int64) ([]byte, error)

	// Seen is the replay-id part; nil: not checked.
	Seen *Seen
	// Dead is the dead-letter part; nil: not checked.
	Dead *Dead
	// ResetCounter sets a counter-mode device's bound back to 0 and its
	// reset floor to minKey, returning the old bound (iotgw device
	// reset-counter); nil: not checked.
	ResetCounter func(ctx context.Context, device string, minKey int64) (int64, error)
}

// Seen is the replay-id part of an engine.
type Seen struct {
	// Prune forgets ids of messages stamped more than Options.Window
	// before now (the engine's clock) and raises the horizon to now −
	// Window.
	Prune func(ctx context.Context) (int64, error)
	// Horizon returns the persisted horizon.
	Horizon func(ctx context.Context) (time.Time, error)
	// IDs calls fn for every id the engine holds.
	IDs func(ctx context.Context, fn func(dev string, id [16]byte, expires time.Time) error) error
	// HorizonRefusal is set when Commit refuses records stamped at or
	// below the horizon.
	HorizonRefusal bool
}

// Dead is the dead-letter part of an engine.
type Dead struct {
	// Bury buries row seq directly; nil when rows are buried through
	// lease.Store.Finish (then Leases must be set).
	Bury  func(ctx context.Context, seq int64, d lease.Dead) error
	List  func(ctx context.Context) ([]outbox.Dead, error)
	Retry func(ctx context.Context, seqs []int64) (int, error)
	Drop  func(ctx context.Context, seqs []int64) (int, error)
}

// Driver opens one engine.
type Driver struct {
	// Open returns a fresh, empty engine for one case.
	Open func(t *testing.T, opt Options) *Engine
	// Bubble runs one case; nil runs it directly. The model runs each case
	// in a testing/synctest bubble, so its clock (time.Now) is fake and
	// the waits for lease expiry cost nothing.
	Bubble func(t *testing.T, f func(t *testing.T))
	// Lease is the lease the expiry cases take and then wait out; default
	// 1s (PostgreSQL keeps lease ends in milliseconds).
	Lease time.Duration
}

type kase struct {
	name  string
	needs func(e *Engine) bool
	opt   Options
	run   func(t *testing.T, e *Engine, d Driver)
}

// Run runs every case of the contract against the driver's engine.
func Run(t *testing.T, d Driver) {
	if d.Lease == 0 {
		d.Lease = time.Second
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := func(t *testing.T) {
				opt := c.opt
				if opt.Window == 0 {
					opt.Window = time.Minute
				}
				e := d.Open(t, opt)
				if c.needs != nil && !c.needs(e) {
					t.Skip("the engine does not have this behaviour")
				}
				c.run(t, e, d)
			}
			if d.Bubble != nil {
				d.Bubble(t, body)
				return
			}
			body(t)
		})
	}
}

func hasLeases(e *Engine) bool { return e.Leases != nil }

var bg = context.Background()

// Rec returns the n-th test record of dev, stamped ts, whose id expires
// window after ts.
func Rec(dev string, n int, ts time.Time, window time.Duration) *outbox.Record {
	var id [16]byte
	binary.BigEndian.PutUint64(id[8:], uint64(n)) //nolint:gosec // G115: test numbers are small and positive
	copy(id[:8], dev)
	return &outbox.Record{DeviceID: dev, MessageID: fmt.Sprintf("m-%s-%d", dev, n), ID: id,
		Timestamp: fmt.Sprint(ts.Unix()), Payload: []byte(fmt.Sprintf(`{"n":%d}`, n)),
		ReceivedAt: time.UnixMilli(time.Now().UnixMilli()), Expires: ts.Add(window)}
}

// oneWins commits eight copies of rec() at once; exactly one may win.
func oneWins(t *testing.T, e *Engine, rec func() *outbox.Record) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for range 8 {
		wg.Go(func() {
			res, err := e.Commit(bg, []*outbox.Record{rec()})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			won += 1 - len(res.Refused)
			mu.Unlock()
		})
	}
	wg.Wait()
	if n := count(t, e); won != 1 || n != 1 {
		t.Fatalf("%d commits won, %d rows; want exactly one", won, n)
	}
}

// CounterRec returns a counter-mode record of dev with counter c.
func CounterRec(dev string, c int64) *outbox.Record {
	digits := strconv.FormatInt(c, 10)
	return &outbox.Record{DeviceID: dev, MessageID: "ctr-" + digits, Timestamp: outbox.CounterTimestamp([]byte(digits)),
		ID: outbox.CounterID(c), Payload: []byte(`{"c":` + digits + `}`), ReceivedAt: time.Now()}
}

// keyed sets the key r verified with.
func keyed(r *outbox.Record, key int64) *outbox.Record {
	r.KeyID = key
	return r
}

func recs(dev string, from, to int) []*outbox.Record {
	var out []*outbox.Record
	for n := from; n <= to; n++ {
		out = append(out, Rec(dev, n, time.Now(), time.Minute))
	}
	return out
}

func commit(t *testing.T, e *Engine, rs ...*outbox.Record) outbox.Result {
	t.Helper()
	res, err := e.Commit(bg, rs)
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
	return res
}

func count(t *testing.T, e *Engine) int {
	t.Helper()
	n, err := e.Count(bg)
	if err != nil {
		t.Fatalf("count: %v", err)
	}
	return n
}

func claim(t *testing.T, e *Engine, owner string, devices, rows int, dur time.Duration) map[string]lease.Claim {
	t.Helper()
	got, err := e.Leases.Claim(bg, owner, devices, rows, dur)
	if err != nil {
		t.Fatalf("claim by %s: %v", owner, err)
	}
	m := map[string]lease.Claim{}
	for _, c := range got {
		if _, dup := m[c.Device]; dup {
			t.Fatalf("claim by %s returned device %s twice", owner, c.Device)
		}
		m[c.Device] = c
	}
	return m
}

func dseqs(rows []*outbox.Record) []int64 {
	out := make([]int64, len(rows))
	for i, r := range rows {
		out[i] = r.DSeq
	}
	return out
}

func done(c lease.Claim, rows ...*outbox.Record) []lease.Done {
	out := make([]lease.Done, len(rows))
	for i, r := range rows {
		out[i] = lease.Done{Lease: c.Lease, Seq: r.Seq}
	}
	return out
}

func finish(t *testing.T, e *Engine, owner string, dn []lease.Done, drained []lease.Lease) int {
	t.Helper()
	stale, err := e.Leases.Finish(bg, owner, dn, drained)
	if err != nil {
		t.Fatalf("finish by %s: %v", owner, err)
	}
	return stale
}

// wait lets a lease of dur run out on the engine's clock.
func wait(dur time.Duration) { time.Sleep(dur + dur/5 + 50*time.Millisecond) }

var cases = []kase{
	{name: "CommitOrdersEachDevice", run: func(t *testing.T, e *Engine, _ Driver) {
		a := append(recs("d1", 1, 3), recs("d2", 1, 2)...)
		if res := commit(t, e, a...); len(res.Refused) != 0 {
			t.Fatalf("refused %d of new records", len(res.Refused))
		}
		b := append(recs("d2", 3, 3), recs("d1", 4, 4)...)
		commit(t, e, b...)
		seqs := map[int64]bool{}
		last := map[string]int64{}
		for _, r := range append(a, b...) {
			if r.Seq <= 0 || seqs[r.Seq] {
				t.Fatalf("%s: seq %d is not a new positive row id", r.MessageID, r.Seq)
			}
			seqs[r.Seq] = true
			if r.DSeq <= last[r.DeviceID] {
				t.Fatalf("%s: DSeq %d does not follow %d (commit order)", r.MessageID, r.DSeq, last[r.DeviceID])
			}
			last[r.DeviceID] = r.DSeq
		}
		if n := count(t, e); n != 7 {
			t.Fatalf("count %d, want 7", n)
		}
	}},
	{name: "CommitRefusesReplay", needs: func(e *Engine) bool { return e.ReplayAuthority }, run: func(t *testing.T, e *Engine, _ Driver) {
		first := Rec("d", 1, time.Now(), time.Minute)
		commit(t, e, first)
		again := Rec("d", 1, time.Now(), time.Minute)
		other := Rec("e", 1, time.Now(), time.Minute) // same number, another device
		copy(other.ID[:], first.ID[:])
		res := commit(t, e, again, other)
		if len(res.Refused) != 1 || res.Refused[0].Rec != again || res.Refused[0].Quota {
			t.Fatalf("refused %+v, want the copy of d's id as a replay (not quota)", res.Refused)
		}
		if n := count(t, e); n != 2 {
			t.Fatalf("count %d, want 2", n)
		}
	}},
	{name: "CommitCounterBound", run: func(t *testing.T, e *Engine, _ Driver) {
		// Counter mode: on every engine the commit is the replay
		// authority (the device's bound), in order within one commit.
		res := commit(t, e, CounterRec("d", 5), CounterRec("d", 5), CounterRec("d", 3), CounterRec("d", 7), CounterRec("e", 1))
		if len(res.Refused) != 2 || !res.Refused[0].Counter || !res.Refused[1].Counter || res.Refused[1].Rec.Timestamp != "c3" {
			t.Fatalf("refused %+v, want the second 5 and the 3 as counter replays", res.Refused)
		}
		for _, c := range []int64{7, 6} {
			if res := commit(t, e, CounterRec("d", c)); len(res.Refused) != 1 || !res.Refused[0].Counter {
				t.Fatalf("counter %d at or below 7: refused %+v", c, res.Refused)
			}
		}
		if res := commit(t, e, CounterRec("d", 8)); len(res.Refused) != 0 {
			t.Fatalf("counter 8: refused %+v", res.Refused)
		}
		if n := count(t, e); n != 4 {
			t.Fatalf("count %d, want 4", n)
		}
		// Counter 0 is never above the bound, not even a new device's.
		if res := commit(t, e, CounterRec("zero", 0)); len(res.Refused) != 1 || !res.Refused[0].Counter {
			t.Fatalf("counter 0 of a new device: refused %+v, want it refused", res.Refused)
		}
	}},
	{name: "CounterResetFloor", needs: func(e *Engine) bool { return e.ResetCounter != nil }, run: func(t *testing.T, e *Engine, _ Driver) {
		// iotgw device reset-counter: the bound goes back to 0 and the key
		// the reset issued (2) becomes the device's reset floor. A message
		// verified with key 1 (a gateway's registry cache may still hold
		// it) is refused however high its counter, and cannot raise the
		// bound; the new key starts at 1, and a later key (a rotation,
		// which keeps the counter) goes on from there.
		commit(t, e, keyed(CounterRec("d", 8), 1))
		if old, err := e.ResetCounter(bg, "d", 2); err != nil || old != 8 {
			t.Fatalf("ResetCounter = %d, %v; want 8", old, err)
		}
		for _, c := range []int64{1, 9, 1<<63 - 1} {
			if res := commit(t, e, keyed(CounterRec("d", c), 1)); len(res.Refused) != 1 || !res.Refused[0].Counter {
				t.Fatalf("counter %d under the key before the reset: refused %+v, want it refused", c, res.Refused)
			}
		}
		if res := commit(t, e, keyed(CounterRec("d", 1), 2)); len(res.Refused) != 0 {
			t.Fatalf("counter 1 under the reset's key: refused %+v", res.Refused)
		}
		if res := commit(t, e, keyed(CounterRec("d", 2), 3)); len(res.Refused) != 0 {
			t.Fatalf("counter 2 under a later key: refused %+v", res.Refused)
		}
		if res := commit(t, e, keyed(CounterRec("d", 2), 3)); len(res.Refused) != 1 || !res.Refused[0].Counter {
			t.Fatalf("counter 2 again: refused %+v, want it refused", res.Refused)
		}
	}},
	{name: "CommitCounterConcurrent", run: func(t *testing.T, e *Engine, _ Driver) {
		oneWins(t, e, func() *outbox.Record { return CounterRec("d", 7) })
	}},
	{name: "CommitReplayConcurrent", needs: func(e *Engine) bool { return e.ReplayAuthority }, run: func(t *testing.T, e *Engine, _ Driver) {
		oneWins(t, e, func() *outbox.Record { return Rec("d", 7, time.Now(), time.Minute) })
	}},
	{name: "CommitQuota", opt: Options{Quota: 3}, needs: func(e *Engine) bool { return e.QuotaRefusal }, run: func(t *testing.T, e *Engine, _ Driver) {
		commit(t, e, recs("d", 1, 2)...)
		r3, r4, e5 := Rec("d", 3, time.Now(), time.Minute), Rec("d", 4, time.Now(), time.Minute), Rec("e", 5, time.Now(), time.Minute)
		res := commit(t, e, r3, r4, e5)
		if len(res.Refused) != 1 || res.Refused[0].Rec != r4 || !res.Refused[0].Quota {
			t.Fatalf("refused %+v, want d's 4th record by quota", res.Refused)
		}
		if e.Leases == nil {
			return
		}
		// The refused id was not recorded: once the backlog drains, a resend is accepted.
		got := claim(t, e, "A", 10, 10, time.Minute)
		for _, c := range got {
			finish(t, e, "A", done(c, c.Rows...), []lease.Lease{c.Lease})
		}
		if res := commit(t, e, Rec("d", 4, time.Now(), time.Minute)); len(res.Refused) != 0 {
			t.Fatalf("resend after drain refused: %+v", res.Refused)
		}
	}},
	{name: "SeenKeepsCommittedIDs", needs: func(e *Engine) bool { return e.Seen != nil && e.Seen.IDs != nil }, run: func(t *testing.T, e *Engine, _ Driver) {
		rs := append(recs("d", 1, 3), recs("e", 1, 1)...)
		commit(t, e, rs...)
		got := map[string]time.Time{}
		if err := e.Seen.IDs(bg, func(dev string, id [16]byte, exp time.Time) error {
			got[dev+string(id[:])] = exp
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			exp, ok := got[r.DeviceID+string(r.ID[:])]
			if !ok {
				t.Fatalf("%s: id not kept", r.MessageID)
			}
			if exp.Before(r.Expires.Truncate(time.Second)) {
				t.Fatalf("%s: kept until %v, before its expiry %v", r.MessageID, exp, r.Expires)
			}
		}
	}},
	{name: "PruneRaisesHorizon", opt: Options{Window: time.Minute}, needs: func(e *Engine) bool { return e.Seen != nil }, run: func(t *testing.T, e *Engine, _ Driver) {
		w := time.Minute
		before := time.Now()
		old := Rec("d", 1, before.Add(-3*w), w)
		fresh := Rec("d", 2, before, w)
		commit(t, e, old, fresh)
		if _, err := e.Seen.Prune(bg); err != nil {
			t.Fatal(err)
		}
		after := time.Now()
		h, err := e.Seen.Horizon(bg)
		if err != nil {
			t.Fatal(err)
		}
		if h.Before(before.Add(-w-time.Second)) || h.After(after.Add(-w+time.Second)) {
			t.Fatalf("horizon %v, want now − window (%v)", h, before.Add(-w))
		}
		if e.Seen.IDs != nil {
			ids := map[int]bool{}
			_ = e.Seen.IDs(bg, func(_ string, id [16]byte, _ time.Time) error {
				ids[int(binary.BigEndian.Uint64(id[8:]))] = true
				return nil
			})
			if ids[1] || !ids[2] {
				t.Fatalf("after prune the ids kept are %v, want only the fresh one (2)", ids)
			}
		}
		if !e.Seen.HorizonRefusal {
			return
		}
		// Copies of the pruned message, and any message at or below the
		// horizon, are refused as replays whoever commits them.
		below := Rec("d", 3, h.Add(-time.Second), w)
		at := Rec("d", 4, h, w)
		above := Rec("d", 5, h.Add(2*time.Second), w)
		res := commit(t, e, Rec("d", 1, before.Add(-3*w), w), below, at, above)
		if len(res.Refused) != 3 {
			t.Fatalf("refused %d, want the pruned copy, the one below and the one at the horizon", len(res.Refused))
		}
		for _, r := range res.Refused {
			if r.Quota || !r.Old || r.Rec == above {
				t.Fatalf("refused %s (quota %v, old %v), want the three at or below the horizon refused as old", r.Rec.MessageID, r.Quota, r.Old)
			}
		}
	}},
	{name: "HorizonNeverGoesBack", needs: func(e *Engine) bool { return e.Seen != nil }, run: func(t *testing.T, e *Engine, _ Driver) {
		commit(t, e, Rec("d", 1, time.Now().Add(-10*time.Minute), time.Minute))
		if _, err := e.Seen.Prune(bg); err != nil {
			t.Fatal(err)
		}
		h1, _ := e.Seen.Horizon(bg)
		commit(t, e, Rec("d", 2, time.Now().Add(-10*time.Minute), time.Minute))
		if _, err := e.Seen.Prune(bg); err != nil {
			t.Fatal(err)
		}
		if h2, _ := e.Seen.Horizon(bg); h2.Before(h1) {
			t.Fatalf("horizon went back from %v to %v", h1, h2)
		}
	}},
	{name: "ClaimTakesOldestRowsUnderNewEpochs", needs: hasLeases, run: func(t *testing.T, e *Engine, _ Driver) {
		commit(t, e, recs("d1", 1, 5)...)
		commit(t, e, recs("d2", 1, 1)...)
		got := claim(t, e, "A", 10, 3, time.Minute)
		if len(got) != 2 {
			t.Fatalf("claimed %d devices, want 2", len(got))
		}
		if s := dseqs(got["d1"].Rows); !slices.Equal(s, []int64{1, 2, 3}) {
			t.Fatalf("d1 rows %v, want DSeq 1 2 3", s)
		}
		for _, c := range got {
			if c.Epoch <= 0 {
				t.Fatalf("%s: epoch %d, want positive", c.Device, c.Epoch)
			}
			for _, r := range c.Rows {
				p := r.Payload
				if p == nil && e.Payload != nil {
					var err error
					if p, err = e.Payload(bg, r.Seq); err != nil {
						t.Fatal(err)
					}
				}
				var n int
				fmt.Sscanf(r.MessageID, "m-"+r.DeviceID+"-%d", &n) //nolint:errcheck // checked by the comparison
				if p != nil && string(p) != fmt.Sprintf(`{"n":%d}`, n) {
					t.Fatalf("%s: payload %q", r.MessageID, p)
				}
			}
		}
		if other := claim(t, e, "B", 10, 10, time.Minute); len(other) != 0 {
			t.Fatalf("B claimed %d leased devices", len(other))
		}
		commit(t, e, recs("d3", 1, 1)...)
		if got := claim(t, e, "B", 1, 10, time.Minute); len(got) != 1 || got["d3"].Device != "d3" {
			t.Fatalf("B claimed %v, want d3 alone", got)
		}
	}},
	{name: "ClaimLimitsDevices", needs: hasLeases, run: func(t *testing.T, e *Engine, _ Driver) {
		for i := range 5 {
			commit(t, e, recs(fmt.Sprintf("d%d", i), 1, 1)...)
		}
		if got := claim(t, e, "A", 2, 10, time.Minute); len(got) != 2 {
			t.Fatalf("claimed %d devices, want 2", len(got))
		}
		if got := claim(t, e, "B", 10, 10, time.Minute); len(got) != 3 {
			t.Fatalf("claimed %d devices, want the 3 left", len(got))
		}
	}},
	{name: "ClaimConcurrentNeverShares", needs: hasLeases, run: func(t *testing.T, e *Engine, _ Driver) {
		for i := range 20 {
			commit(t, e, recs(fmt.Sprintf("d%02d", i), 1, 2)...)
		}
		var mu sync.Mutex
		owners := map[string]string{}
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				owner := fmt.Sprintf("G%d", g)
				for range 3 {
					got, err := e.Leases.Claim(bg, owner, 3, 10, time.Minute)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, c := range got {
						if o, dup := owners[c.Device]; dup {
							t.Errorf("%s claimed by %s and %s", c.Device, o, owner)
						}
						owners[c.Device] = owner
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(owners) != 20 {
			t.Fatalf("%d devices claimed, want 20", len(owners))
		}
	}},
	{name: "RenewKeepsOnlyHeldLeases", needs: hasLeases, run: func(t *testing.T, e *Engine, _ Driver) {
		commit(t, e, recs("d", 1, 1)...)
		c := claim(t, e, "A", 1, 1, time.Minute)["d"]
		kept, err := e.Leases.Renew(bg, "A", []lease.Lease{c.Lease}, time.Minute)
		if err != nil || len(kept) != 1 || kept[0] != c.Lease {
			t.Fatalf("holder renewed %v, %v; want its lease", kept, err)
		}
		if kept, err := e.Leases.Renew(bg, "B", []lease.Lease{c.Lease}, time.Minute); err != nil || len(kept) != 0 {
			t.Fatalf("another owner renewed %v, %v", kept, err)
		}
		staleL := lease.Lease{Device: "d", Epoch: c.Epoch - 1}
		if kept, err := e.Leases.Renew(bg, "A", []lease.Lease{staleL}, time.Minute); err != nil || len(kept) != 0 {
			t.Fatalf("renew at an older epoch kept %v, %v", kept, err)
		}
	}},
	{name: "FinishDeletesAndDrainHandsOn", needs: hasLeases, run: func(t *testing.T, e *Engine, _ Driver) {
		commit(t, e, recs("d", 1, 3)...)
		c := claim(t, e, "A", 1, 2, time.Minute)["d"]
		if stale := finish(t, e, "A", done(c, c.Rows...), []lease.Lease{c.Lease}); stale != 0 {
			t.Fatalf("holder's finish: %d stale", stale)
		}
		if n := count(t, e); n != 1 {
			t.Fatalf("count %d after finishing 2 of 3, want 1", n)
		}
		if e.Payload != nil {
			if _, err := e.Payload(bg, c.Rows[0].Seq); !errors.Is(err, outbox.ErrNoRow) {
				t.Fatalf("payload of a finished row: %v, want ErrNoRow", err)
			}
		}
		// Drained: the lease went back, and another gateway takes the rest at once.
		c2 := claim(t, e, "B", 1, 10, time.Minute)["d"]
		if c2.Epoch <= c.Epoch || len(c2.Rows) != 1 || c2.Rows[0].DSeq != 3 {
			t.Fatalf("B claimed epoch %d rows %v, want an epoch above %d and DSeq 3", c2.Epoch, dseqs(c2.Rows), c.Epoch)
		}
	}},
	{name: "FinishWithoutDrainKeepsLease", needs: hasLeases, run: func(t *testing.T, e *Engine, _ Driver) {
		commit(t, e, recs("d", 1, 2)...)
		c := claim(t, e, "A", 1, 10, time.Minute)["d"]
		finish(t, e, "A", done(c, c.Rows[0]), nil)
		if got := claim(t, e, "B", 1, 10, time.Minute); len(got) != 0 {
			t.Fatalf("B claimed a device A still holds")
		}
		commit(t, e, recs("d", 3, 3)...)
		if got := claim(t, e, "B", 1, 10, time.Minute); len(got) != 0 {
			t.Fatalf("B claimed a device A still holds, after a commit")
		}
	}},
	{name: "ExpiredLeaseIsTakenOverAndFenced", needs: hasLeases, run: func(t *testing.T, e *Engine, d Driver) {
		commit(t, e, recs("d", 1, 3)...)
		a := claim(t, e, "A", 1, 10, d.Lease)["d"]
		wait(d.Lease)
		b := claim(t, e, "B", 1, 10, time.Minute)["d"]
		if b.Epoch <= a.Epoch || len(b.Rows) != 3 || b.Rows[0].DSeq != 1 {
			t.Fatalf("B took over epoch %d rows %v, want an epoch above %d and DSeq 1..3", b.Epoch, dseqs(b.Rows), a.Epoch)
		}
		// A lost the lease: it can change nothing.
		if kept, err := e.Leases.Renew(bg, "A", []lease.Lease{a.Lease}, time.Minute); err != nil || len(kept) != 0 {
			t.Fatalf("stale renew kept %v, %v", kept, err)
		}
		if stale := finish(t, e, "A", done(a, a.Rows[0]), []lease.Lease{a.Lease}); stale == 0 {
			t.Fatal("stale finish and drain reported nothing stale")
		}
		if n := count(t, e); n != 3 {
			t.Fatalf("a stale finish deleted a row: count %d, want 3", n)
		}
		if got := claim(t, e, "C", 1, 10, time.Minute); len(got) != 0 {
			t.Fatal("a stale drain gave B's lease back")
		}
		if kept, err := e.Leases.Renew(bg, "B", []lease.Lease{b.Lease}, time.Minute); err != nil || len(kept) != 1 {
			t.Fatalf("the new holder lost its lease to a stale drain: %v, %v", kept, err)
		}
		if e.Dead != nil {
			bury := []lease.Done{{Lease: a.Lease, Seq: a.Rows[1].Seq, Dead: &lease.Dead{Attempts: 1, LastError: "x", At: time.Now()}}}
			if stale := finish(t, e, "A", bury, nil); stale != 1 {
				t.Fatalf("stale bury: %d stale, want 1", stale)
			}
			if l, _ := e.Dead.List(bg); len(l) != 0 {
				t.Fatalf("a stale bury made %d dead letters", len(l))
			}
		}
		// The same owner holding an older epoch is fenced too (a gateway
		// that re-claimed its own device).
		if stale := finish(t, e, "B", []lease.Done{{Lease: lease.Lease{Device: "d", Epoch: a.Epoch}, Seq: b.Rows[0].Seq}}, nil); stale != 1 {
			t.Fatalf("finish at an older epoch by the holder: %d stale, want 1", stale)
		}
		if stale := finish(t, e, "B", done(b, b.Rows...), []lease.Lease{b.Lease}); stale != 0 || count(t, e) != 0 {
			t.Fatalf("the holder's finish: %d stale, %d rows left", stale, count(t, e))
		}
	}},
	{name: "ReclaimOfOwnDeviceRaisesEpoch", needs: hasLeases, run: func(t *testing.T, e *Engine, d Driver) {
		commit(t, e, recs("d", 1, 2)...)
		a1 := claim(t, e, "A", 1, 10, d.Lease)["d"]
		wait(d.Lease)
		a2 := claim(t, e, "A", 1, 10, time.Minute)["d"]
		if a2.Epoch <= a1.Epoch {
			t.Fatalf("re-claim epoch %d, want above %d", a2.Epoch, a1.Epoch)
		}
		if kept, _ := e.Leases.Renew(bg, "A", []lease.Lease{a1.Lease}, time.Minute); len(kept) != 0 {
			t.Fatal("renew at the first epoch kept")
		}
	}},
	{name: "RenewKeepsLeaseAlive", needs: hasLeases, run: func(t *testing.T, e *Engine, d Driver) {
		commit(t, e, recs("d", 1, 1)...)
		a := claim(t, e, "A", 1, 10, d.Lease)["d"]
		for range 3 {
			time.Sleep(d.Lease / 2)
			if kept, err := e.Leases.Renew(bg, "A", []lease.Lease{a.Lease}, d.Lease); err != nil || len(kept) != 1 {
				t.Fatalf("renew: %v, %v", kept, err)
			}
			if got := claim(t, e, "B", 1, 10, time.Minute); len(got) != 0 {
				t.Fatal("B claimed a renewed lease")
			}
		}
	}},
	{name: "ReleaseGivesBackOwnLeasesOnly", needs: hasLeases, run: func(t *testing.T, e *Engine, _ Driver) {
		commit(t, e, recs("a1", 1, 1)...)
		commit(t, e, recs("a2", 1, 1)...)
		a := claim(t, e, "A", 2, 10, time.Minute)
		commit(t, e, recs("b1", 1, 1)...)
		claim(t, e, "B", 1, 10, time.Minute)
		if err := e.Leases.Release(bg, "A"); err != nil {
			t.Fatal(err)
		}
		got := claim(t, e, "C", 10, 10, time.Minute)
		if len(got) != 2 || got["a1"].Epoch <= a["a1"].Epoch {
			t.Fatalf("after A's release C claimed %v, want a1 and a2 at new epochs", got)
		}
		if stale := finish(t, e, "A", done(a["a1"], a["a1"].Rows...), nil); stale != 1 || count(t, e) != 3 {
			t.Fatalf("finish after release: %d stale, %d rows; want 1 stale, 3 rows", stale, count(t, e))
		}
	}},
	{name: "DeadLetters", needs: func(e *Engine) bool { return e.Dead != nil && (e.Dead.Bury != nil || e.Leases != nil) }, run: func(t *testing.T, e *Engine, _ Driver) {
		commit(t, e, recs("d", 1, 3)...)
		commit(t, e, recs("e", 1, 1)...)
		when := time.Unix(time.Now().Unix(), 0)
		bury := func(dev string, seq int64, attempts int) {
			dd := lease.Dead{Attempts: attempts, LastError: fmt.Sprintf("503 #%d", attempts), At: when}
			if e.Dead.Bury != nil {
				if err := e.Dead.Bury(bg, seq, dd); err != nil {
					t.Fatal(err)
				}
				return
			}
			got := claim(t, e, "A", 10, 10, time.Minute)
			var drained []lease.Lease
			for _, c := range got {
				drained = append(drained, c.Lease)
			}
			if stale := finish(t, e, "A", []lease.Done{{Lease: got[dev].Lease, Seq: seq, Dead: &dd}}, drained); stale != 0 {
				t.Fatalf("bury: %d stale", stale)
			}
		}
		all := rowsOf(t, e)
		bury("d", all["d"][0].Seq, 5)
		bury("e", all["e"][0].Seq, 2)
		l, err := e.Dead.List(bg)
		if err != nil || len(l) != 2 {
			t.Fatalf("dead letters %d, %v; want 2", len(l), err)
		}
		if l[0].DeviceID != "d" || l[0].Attempts != 5 || l[0].LastError != "503 #5" || !l[0].DeadAt.Equal(when) || string(l[0].Payload) != `{"n":1}` {
			t.Fatalf("dead letter %+v", l[0])
		}
		if n := count(t, e); n != 2 {
			t.Fatalf("count %d after burying 2 of 4, want 2", n)
		}
		if n, err := e.Dead.Retry(bg, []int64{l[0].Seq}); err != nil || n != 1 {
			t.Fatalf("retry: %d, %v", n, err)
		}
		rows := rowsOf(t, e)["d"]
		if len(rows) != 3 || rows[2].MessageID != "m-d-1" || rows[2].DSeq <= rows[1].DSeq {
			t.Fatalf("retried row is not last in d's order: %v", dseqs(rows))
		}
		if n, err := e.Dead.Drop(bg, nil); err != nil || n != 1 {
			t.Fatalf("drop all: %d, %v; want 1", n, err)
		}
		if l, _ := e.Dead.List(bg); len(l) != 0 {
			t.Fatalf("%d dead letters left after drop", len(l))
		}
	}},
}

// rowsOf returns each device's pending rows in DSeq order: read through
// Rows, or claimed and released.
func rowsOf(t *testing.T, e *Engine) map[string][]*outbox.Record {
	t.Helper()
	out := map[string][]*outbox.Record{}
	if e.Rows != nil {
		all, err := e.Rows(bg)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range all {
			out[r.DeviceID] = append(out[r.DeviceID], r)
		}
		return out
	}
	got := claim(t, e, "reader", 1000, 1000, time.Minute)
	for dev, c := range got {
		out[dev] = c.Rows
	}
	if err := e.Leases.Release(bg, "reader"); err != nil {
		t.Fatal(err)
	}
	return out
}
