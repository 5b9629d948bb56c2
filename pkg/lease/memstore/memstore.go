package memstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// Config is the model's fleet-wide settings (what the PostgreSQL engine
// keeps in the database or takes at open).
type Config struct {
	// Quota bounds each device's pending rows fleet-wide
	// (outbox.max_pending_per_device); 0 turns it off.
	Quota int
	// Window is the fleet-wide freshness window: PruneSeen forgets ids of
	// messages stamped more than Window before the store's clock.
	Window time.Duration
	// OnCommit, when set, is called with a copy of every row Commit
	// inserts, after the commit (the simulation's record of acceptances).
	OnCommit func(rec outbox.Record)
}

// Op names a call, for fault injection.
type Op string

// The calls a Fault can hit.
const (
	OpCommit  Op = "commit"
	OpClaim   Op = "claim"
	OpRenew   Op = "renew"
	OpFinish  Op = "finish"
	OpRelease Op = "release"
	OpPayload Op = "payload"
	OpPrune   Op = "prune"
)

// Fault is what happens to one call.
type Fault struct {
	// Stall delays the call this long before it takes effect (a frozen
	// connection). If the caller's ctx ends meanwhile, the call fails
	// without effect.
	Stall time.Duration
	// Fail fails the call without effect (a dropped connection).
	Fail bool
	// LoseAnswer lets the call take effect, then fails it (a COMMIT
	// whose answer is lost with the connection).
	LoseAnswer bool
}

// Injector decides the fault of each call, given the connection's name
// and the call. It is called without the store's lock held.
type Injector func(conn string, op Op) Fault

// ErrInjected is the error of a call failed by a Fault.
var ErrInjected = errors.New("memstore: injected fault (connection dropped)")

// ErrAnswerLost is the error of a call that took effect but whose answer
// was lost.
var ErrAnswerLost = errors.New("memstore: injected fault (answer lost after commit)")

type device struct {
	next, pending int64
	bound         int64 // counter mode: the highest counter accepted
	minKey        int64 // counter mode: the reset floor (the key the last reset issued)
	owner         string
	until         time.Time // zero: no lease
	epoch         int64
}

type seenKey struct {
	dev string
	id  [16]byte
}

type seenRow struct {
	ts      int64 // the message's timestamp, Unix seconds
	expires time.Time
}

// DB is the model of the shared database: outbox rows with per-device
// DSeq, replay ids (the replay authority), the replay horizon, per-device
// leases with epochs, and dead letters. Every method is atomic (one lock),
// as each is one transaction on PostgreSQL. Its clock is time.Now (fake
// time under testing/synctest), one clock for the whole fleet.
type DB struct {
	cfg Config

	fmu    sync.Mutex
	inject Injector

	mu      sync.Mutex
	seq     int64
	devs    map[string]*device
	rows    map[int64]*outbox.Record
	seen    map[seenKey]seenRow
	horizon int64
	dead    map[int64]outbox.Dead
}

// New returns an empty database.
func New(cfg Config) *DB {
	return &DB{cfg: cfg, devs: map[string]*device{}, rows: map[int64]*outbox.Record{},
		seen: map[seenKey]seenRow{}, dead: map[int64]outbox.Dead{}}
}

// SetInjector sets (nil: clears) the fault injector.
func (db *DB) SetInjector(f Injector) {
	db.fmu.Lock()
	db.inject = f
	db.fmu.Unlock()
}

// Conn returns a connection named name (a gateway's pool): the engine as
// that gateway sees it, through which faults are injected by name.
func (db *DB) Conn(name string) *Conn { return &Conn{db: db, name: name} }

// Conn is one gateway's connection to the model. It implements
// outbox.Committer and lease.Store.
type Conn struct {
	db   *DB
	name string
}

// enter applies the fault of call op: it returns the error to fail with
// before any effect, and whether the answer is to be lost after it.
func (c *Conn) enter(ctx context.Context, op Op) (lose bool, err error) {
	c.db.fmu.Lock()
	inj := c.db.inject
	c.db.fmu.Unlock()
	var f Fault
	if inj != nil {
		f = inj(c.name, op)
	}
	if f.Stall > 0 {
		t := time.NewTimer(f.Stall)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false, fmt.Errorf("%s: %w", op, ctx.Err())
		}
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	if f.Fail {
		return false, fmt.Errorf("%s: %w", op, ErrInjected)
	}
	return f.LoseAnswer, nil
}

func (c *Conn) leave(op Op, lose bool) error {
	if lose {
		return fmt.Errorf("%s: %w", op, ErrAnswerLost)
	}
	return nil
}

func (db *DB) dev(id string) *device {
	d := db.devs[id]
	if d == nil {
		d = &device{}
		db.devs[id] = d
	}
	return d
}

func unixTS(r *outbox.Record) int64 {
	ts, err := strconv.ParseInt(r.Timestamp, 10, 64)
	if err != nil { // keep the id longer, not shorter (as the engines do)
		return r.Expires.Unix()
	}
	return ts
}

// Commit implements outbox.Committer as the PostgreSQL engine does: in
// order, a record stamped at or below the horizon is refused (Old), one
// whose device is at the quota is refused (Quota), one whose id was
// committed before (by any gateway) is refused as a replay, and the others
// become rows with their device's next DSeq. dels and lastSeq are ignored (rows are
// deleted by Finish).
func (c *Conn) Commit(ctx context.Context, recs []*outbox.Record, _ []int64, _ int64) (outbox.Result, error) {
	lose, err := c.enter(ctx, OpCommit)
	if err != nil {
		return outbox.Result{}, fmt.Errorf("outbox commit: %w", err)
	}
	db := c.db
	db.mu.Lock()
	var res outbox.Result
	var won []outbox.Record
	for _, r := range recs {
		d := db.dev(r.DeviceID)
		c, counted := r.Counter()
		ts := unixTS(r)
		switch {
		case counted && (c <= d.bound || r.KeyID < d.minKey): // counter mode: the bound (and the reset floor) is the authority, no seen row, no horizon
			res.Refused = append(res.Refused, outbox.Refusal{Rec: r, Counter: true})
			continue
		case counted && db.cfg.Quota > 0 && d.pending >= int64(db.cfg.Quota):
			res.Refused = append(res.Refused, outbox.Refusal{Rec: r, Quota: true})
			continue
		case counted:
			d.bound = c
		case ts <= db.horizon:
			res.Refused = append(res.Refused, outbox.Refusal{Rec: r, Old: true})
			continue
		}
		if !counted {
			if db.cfg.Quota > 0 && d.pending >= int64(db.cfg.Quota) {
				res.Refused = append(res.Refused, outbox.Refusal{Rec: r, Quota: true})
				continue
			}
			k := seenKey{r.DeviceID, r.ID}
			if _, dup := db.seen[k]; dup {
				res.Refused = append(res.Refused, outbox.Refusal{Rec: r})
				continue
			}
			db.seen[k] = seenRow{ts: ts, expires: r.Expires}
		}
		db.seq++
		d.next++
		d.pending++
		r.Seq, r.DSeq = db.seq, d.next
		cp := *r
		cp.Payload = slices.Clone(r.Payload)
		db.rows[cp.Seq] = &cp
		won = append(won, cp)
	}
	db.mu.Unlock()
	if db.cfg.OnCommit != nil {
		for _, r := range won {
			db.cfg.OnCommit(r)
		}
	}
	if err := c.leave(OpCommit, lose); err != nil {
		return outbox.Result{}, fmt.Errorf("outbox commit: %w", err)
	}
	return res, nil
}

// Pending implements outbox.Committer: rows are claimed, never pushed.
func (c *Conn) Pending(context.Context, int64) ([]*outbox.Record, error) { return nil, nil }

// Claim implements lease.Store: devices with pending rows and no live
// lease, longest free first (then by id, so the model is deterministic),
// each with a new epoch.
func (c *Conn) Claim(ctx context.Context, owner string, devices, rows int, dur time.Duration) ([]lease.Claim, error) {
	lose, err := c.enter(ctx, OpClaim)
	if err != nil {
		return nil, fmt.Errorf("outbox claim: %w", err)
	}
	db := c.db
	db.mu.Lock()
	now := time.Now()
	var ids []string
	for id, d := range db.devs {
		if d.pending > 0 && d.until.Before(now) {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b string) int {
		if c := db.devs[a].until.Compare(db.devs[b].until); c != 0 {
			return c
		}
		if a < b {
			return -1
		}
		return 1
	})
	ids = ids[:min(len(ids), devices)]
	slices.Sort(ids)
	out := make([]lease.Claim, 0, len(ids))
	for _, id := range ids {
		d := db.devs[id]
		d.owner, d.until = owner, now.Add(dur)
		d.epoch++
		out = append(out, lease.Claim{Lease: lease.Lease{Device: id, Epoch: d.epoch}, Rows: db.head(id, rows)})
	}
	db.mu.Unlock()
	if err := c.leave(OpClaim, lose); err != nil {
		return nil, fmt.Errorf("outbox claim: %w", err)
	}
	return out, nil
}

// head returns copies of up to n of dev's oldest rows (db.mu held).
func (db *DB) head(dev string, n int) []*outbox.Record {
	var out []*outbox.Record
	for _, r := range db.rows {
		if r.DeviceID == dev {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *outbox.Record) int { return int(a.DSeq - b.DSeq) })
	out = out[:min(len(out), n)]
	for i, r := range out {
		cp := *r
		cp.Payload = slices.Clone(r.Payload)
		out[i] = &cp
	}
	return out
}

// holds reports whether owner holds l (db.mu held).
func (db *DB) holds(owner string, l lease.Lease) bool {
	d := db.devs[l.Device]
	return d != nil && d.owner == owner && owner != "" && d.epoch == l.Epoch
}

// Renew implements lease.Store.
func (c *Conn) Renew(ctx context.Context, owner string, leases []lease.Lease, dur time.Duration) ([]lease.Lease, error) {
	lose, err := c.enter(ctx, OpRenew)
	if err != nil {
		return nil, fmt.Errorf("outbox renew leases: %w", err)
	}
	db := c.db
	db.mu.Lock()
	now := time.Now()
	var kept []lease.Lease
	for _, l := range leases {
		if db.holds(owner, l) {
			db.devs[l.Device].until = now.Add(dur)
			kept = append(kept, l)
		}
	}
	db.mu.Unlock()
	if err := c.leave(OpRenew, lose); err != nil {
		return nil, fmt.Errorf("outbox renew leases: %w", err)
	}
	return kept, nil
}

// Finish implements lease.Store: each item applies only while owner holds
// its device at its epoch; the others are counted stale.
func (c *Conn) Finish(ctx context.Context, owner string, done []lease.Done, drained []lease.Lease) (int, error) {
	lose, err := c.enter(ctx, OpFinish)
	if err != nil {
		return 0, fmt.Errorf("outbox finish: %w", err)
	}
	db := c.db
	db.mu.Lock()
	stale := 0
	for _, x := range done {
		if !db.holds(owner, x.Lease) {
			stale++
			continue
		}
		r := db.rows[x.Seq]
		if r == nil || r.DeviceID != x.Device {
			continue
		}
		delete(db.rows, x.Seq)
		db.devs[x.Device].pending--
		if x.Dead != nil {
			db.dead[r.Seq] = outbox.Dead{Record: *r, Attempts: x.Dead.Attempts, LastError: x.Dead.LastError, DeadAt: x.Dead.At}
		}
	}
	for _, l := range drained {
		if !db.holds(owner, l) {
			stale++
			continue
		}
		d := db.devs[l.Device]
		d.owner, d.until = "", time.Time{}
	}
	db.mu.Unlock()
	if err := c.leave(OpFinish, lose); err != nil {
		return 0, fmt.Errorf("outbox finish: %w", err)
	}
	return stale, nil
}

// Release implements lease.Store.
func (c *Conn) Release(ctx context.Context, owner string) error {
	lose, err := c.enter(ctx, OpRelease)
	if err != nil {
		return fmt.Errorf("outbox release leases: %w", err)
	}
	db := c.db
	db.mu.Lock()
	for _, d := range db.devs {
		if d.owner == owner && owner != "" {
			d.owner, d.until = "", time.Time{}
		}
	}
	db.mu.Unlock()
	return c.leave(OpRelease, lose)
}

// Payload returns the payload of row seq, or an error wrapping
// outbox.ErrNoRow.
func (c *Conn) Payload(ctx context.Context, seq int64) ([]byte, error) {
	if _, err := c.enter(ctx, OpPayload); err != nil {
		return nil, fmt.Errorf("load payload: %w", err)
	}
	db := c.db
	db.mu.Lock()
	defer db.mu.Unlock()
	r := db.rows[seq]
	if r == nil {
		return nil, fmt.Errorf("outbox row %d: %w", seq, outbox.ErrNoRow)
	}
	return slices.Clone(r.Payload), nil
}

// PruneSeen forgets the ids of messages stamped before the store's clock
// minus the fleet-wide window (and past their stored expiry), and raises
// the horizon to that cut in the same step, so that a copy of a pruned
// message is refused by Commit whichever gateway receives it.
func (c *Conn) PruneSeen(ctx context.Context) (int64, error) {
	lose, err := c.enter(ctx, OpPrune)
	if err != nil {
		return 0, fmt.Errorf("prune seen: %w", err)
	}
	db := c.db
	db.mu.Lock()
	now := time.Now()
	cut := now.Add(-db.cfg.Window).Unix()
	var n int64
	for k, s := range db.seen {
		if s.ts < cut && s.expires.Before(now) {
			delete(db.seen, k)
			n++
		}
	}
	db.horizon = max(db.horizon, cut)
	db.mu.Unlock()
	if err := c.leave(OpPrune, lose); err != nil {
		return 0, fmt.Errorf("prune seen: %w", err)
	}
	return n, nil
}

// SeenHorizon returns the timestamp at or below which Commit refuses
// every record.
func (c *Conn) SeenHorizon(context.Context) (time.Time, error) {
	c.db.mu.Lock()
	defer c.db.mu.Unlock()
	return time.Unix(c.db.horizon, 0), nil
}

// Seen calls fn for every replay id the store holds, with its expiry.
func (c *Conn) Seen(ctx context.Context, fn func(deviceID string, id [16]byte, expires time.Time) error) error {
	c.db.mu.Lock()
	type item struct {
		k seenKey
		s seenRow
	}
	all := make([]item, 0, len(c.db.seen))
	for k, s := range c.db.seen {
		all = append(all, item{k, s})
	}
	c.db.mu.Unlock()
	for _, it := range all {
		exp := it.s.expires
		if w := time.Unix(it.s.ts, 0).Add(c.db.cfg.Window); w.After(exp) {
			exp = w
		}
		if err := fn(it.k.dev, it.k.id, exp); err != nil {
			return err
		}
	}
	return nil
}

// DeadLetters lists the dead letters, oldest first.
func (c *Conn) DeadLetters(context.Context) ([]outbox.Dead, error) {
	c.db.mu.Lock()
	defer c.db.mu.Unlock()
	out := make([]outbox.Dead, 0, len(c.db.dead))
	for _, d := range c.db.dead {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b outbox.Dead) int { return int(a.Seq - b.Seq) })
	return out, nil
}

// RetryDead moves dead letters (all when seqs is empty) back into the
// outbox as new rows, each at the end of its device's order, and returns
// how many.
func (c *Conn) RetryDead(ctx context.Context, seqs []int64) (int, error) {
	return c.deadOp(seqs, true)
}

// DropDead deletes dead letters for good (all when seqs is empty).
func (c *Conn) DropDead(ctx context.Context, seqs []int64) (int, error) {
	return c.deadOp(seqs, false)
}

func (c *Conn) deadOp(seqs []int64, retry bool) (int, error) {
	db := c.db
	db.mu.Lock()
	defer db.mu.Unlock()
	var pick []int64
	for s := range db.dead {
		if len(seqs) == 0 || slices.Contains(seqs, s) {
			pick = append(pick, s)
		}
	}
	slices.Sort(pick)
	for _, s := range pick {
		d := db.dead[s]
		delete(db.dead, s)
		if !retry {
			continue
		}
		r := d.Record
		r.Payload = slices.Clone(r.Payload)
		dv := db.dev(r.DeviceID)
		db.seq++
		dv.next++
		dv.pending++
		r.Seq, r.DSeq, r.ReceivedAt = db.seq, dv.next, time.Now()
		db.rows[r.Seq] = &r
	}
	return len(pick), nil
}

// Count returns how many rows are pending.
func (c *Conn) Count(context.Context) (int, error) {
	c.db.mu.Lock()
	defer c.db.mu.Unlock()
	return len(c.db.rows), nil
}

// ResetCounter sets device id's counter bound back to 0 and its reset
// floor to minKey, and returns the bound it had (iotgw device
// reset-counter).
func (c *Conn) ResetCounter(_ context.Context, id string, minKey int64) (int64, error) {
	c.db.mu.Lock()
	defer c.db.mu.Unlock()
	d := c.db.dev(id)
	old := d.bound
	d.bound, d.minKey = 0, minKey
	return old, nil
}

// LeaseOf returns dev's lease as the store holds it now: its owner (""
// when free or expired) and epoch. The simulation's backend asks it at the
// moment of each POST.
func (db *DB) LeaseOf(dev string) (owner string, epoch int64) {
	db.mu.Lock()
	defer db.mu.Unlock()
	d := db.devs[dev]
	if d == nil {
		return "", 0
	}
	if !d.until.After(time.Now()) {
		return "", d.epoch
	}
	return d.owner, d.epoch
}

// Rows returns copies of every pending row, in Seq order.
func (db *DB) Rows() []outbox.Record {
	db.mu.Lock()
	defer db.mu.Unlock()
	out := make([]outbox.Record, 0, len(db.rows))
	for _, r := range db.rows {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b outbox.Record) int { return int(a.Seq - b.Seq) })
	return out
}

// DeadSeqs returns the seqs of the dead letters.
func (db *DB) DeadSeqs() []int64 {
	db.mu.Lock()
	defer db.mu.Unlock()
	out := make([]int64, 0, len(db.dead))
	for s := range db.dead {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

var (
	_ outbox.Committer = (*Conn)(nil)
	_ lease.Store      = (*Conn)(nil)
)
