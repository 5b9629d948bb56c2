package sqlitestore

import (
	"context"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// Leases is the SQLite engine's side of lease.Store, answered in process:
// one gateway owns the file (Lock), so the rows to claim are exactly those
// its Store committed (or found inserted by the CLI, Pending), kept here
// in memory in seq order per device. A claim costs no database round
// trip; a finished row is deleted in the writer's next commit (Settle), a
// buried one at once (Bury). Leases and epochs behave as on a shared
// engine, so one lease.Forwarder serves both.
type Leases struct {
	st      *Store
	now     func() time.Time
	writer  Writer
	mu      sync.Mutex
	devs    map[string]*ldev
	ready   []string // devices with rows and no lease, in the order they became so
	leased  map[string]bool
	scanned time.Time // last look for expired leases
	budget  int64     // payload bytes kept in memory (backend.max_payload_memory)
	held    int64
}

// Writer is what Leases needs of the outbox.Writer that commits to the
// Store: deletes ride in its next transaction, and a buried row frees its
// slot at once.
type Writer interface {
	Settle(seq int64)
	Release(n int)
}

type ldev struct {
	rows   []*outbox.Record
	owner  string
	epoch  int64
	until  time.Time
	queued bool // in ready
}

// expiredScan is how often Claim looks for leases that ran out without
// being renewed or given back (at most once per this).
const expiredScan = 100 * time.Millisecond

// Leases returns the Store's lease side. Rows the Store commits from now
// on are claimable; add those pending already with Add. budget bounds the
// payload bytes kept in memory for rows not yet claimed (past it, rows
// wait without their payload, read back when posted). Call it once,
// before the first Commit.
func (s *Store) Leases(w Writer, budget int64, now func() time.Time) *Leases {
	l := &Leases{st: s, now: now, writer: w, devs: map[string]*ldev{}, leased: map[string]bool{}, budget: budget}
	s.leases = l
	return l
}

// Add makes rows (in seq order) claimable: rows pending at start, and rows
// the Store committed or found.
func (l *Leases) Add(rows []*outbox.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range rows {
		d := l.devs[r.DeviceID]
		if d == nil {
			d = &ldev{}
			l.devs[r.DeviceID] = d
		}
		if r.Payload != nil {
			if l.held+int64(len(r.Payload)) > l.budget {
				r.Payload = nil // read back when posted
			} else {
				l.held += int64(len(r.Payload))
			}
		}
		d.rows = append(d.rows, r)
		if d.owner == "" && !d.queued {
			d.queued = true
			l.ready = append(l.ready, r.DeviceID)
		}
	}
}

// Claim implements lease.Store.
func (l *Leases) Claim(_ context.Context, owner string, devices, rows int, ttl time.Duration) ([]lease.Claim, error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []lease.Claim
	grant := func(id string, d *ldev) {
		l.leased[id] = true
		d.owner, d.epoch, d.until = owner, d.epoch+1, now.Add(ttl)
		c := lease.Claim{Lease: lease.Lease{Device: id, Epoch: d.epoch}}
		for _, r := range d.rows[:min(rows, len(d.rows))] {
			cp := *r // the claimer's copy: it may drop the payload
			c.Rows = append(c.Rows, &cp)
			l.held -= int64(len(r.Payload))
			r.Payload = nil // handed on; a second claim reads it back
		}
		out = append(out, c)
	}
	for len(out) < devices && len(l.ready) > 0 {
		id := l.ready[0]
		l.ready[0] = ""
		l.ready = l.ready[1:]
		d := l.devs[id]
		if d == nil {
			continue
		}
		d.queued = false
		if len(d.rows) == 0 {
			delete(l.devs, id)
			continue
		}
		if d.owner != "" && now.Before(d.until) {
			continue // leased: back in ready when given back
		}
		grant(id, d)
	}
	if len(out) < devices && now.Sub(l.scanned) >= expiredScan {
		l.scanned = now
		for id := range l.leased {
			if d := l.devs[id]; d != nil && len(d.rows) > 0 && !now.Before(d.until) && len(out) < devices && !l.claimed(out, id) {
				grant(id, d)
			}
		}
	}
	return out, nil
}

func (l *Leases) claimed(out []lease.Claim, id string) bool {
	for _, c := range out {
		if c.Device == id {
			return true
		}
	}
	return false
}

// holds reports whether owner holds dev's lease at epoch (l.mu held).
func (l *Leases) holds(owner string, le lease.Lease) (*ldev, bool) {
	d := l.devs[le.Device]
	return d, d != nil && d.owner == owner && d.epoch == le.Epoch
}

// Renew implements lease.Store.
func (l *Leases) Renew(_ context.Context, owner string, leases []lease.Lease, ttl time.Duration) ([]lease.Lease, error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var kept []lease.Lease
	for _, le := range leases {
		if d, ok := l.holds(owner, le); ok {
			d.until = now.Add(ttl)
			kept = append(kept, le)
		}
	}
	return kept, nil
}

// Finish implements lease.Store: a buried row is moved to the dead
// letters at once (one transaction each; a failure refuses the whole
// call, which the Forwarder retries), a deleted one leaves in the
// writer's next commit.
func (l *Leases) Finish(ctx context.Context, owner string, done []lease.Done, drained []lease.Lease) (int, error) {
	l.mu.Lock()
	var bury []lease.Done
	stale := 0
	for _, d := range done {
		if _, ok := l.holds(owner, d.Lease); !ok {
			stale++
		} else if d.Dead != nil {
			bury = append(bury, d)
		}
	}
	l.mu.Unlock()
	for _, d := range bury { // outside the lock: a transaction each
		if err := l.st.Bury(ctx, d.Seq, d.Dead.Attempts, d.Dead.LastError, d.Dead.At); err != nil {
			return 0, err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range done {
		dv, ok := l.holds(owner, d.Lease)
		if !ok || !dv.remove(d.Seq, &l.held) {
			continue
		}
		if d.Dead != nil {
			l.writer.Release(1)
		} else {
			l.writer.Settle(d.Seq)
		}
	}
	for _, le := range drained {
		d, ok := l.holds(owner, le)
		if !ok {
			stale++
			continue
		}
		l.free(le.Device, d)
	}
	return stale, nil
}

// free gives dev's lease back (l.mu held): with rows left, it is ready.
func (l *Leases) free(id string, d *ldev) {
	d.owner, d.until = "", time.Time{}
	delete(l.leased, id)
	switch {
	case len(d.rows) == 0:
		if !d.queued {
			delete(l.devs, id)
		}
	case !d.queued:
		d.queued = true
		l.ready = append(l.ready, id)
	}
}

// remove drops row seq of d, reporting whether it was there.
func (d *ldev) remove(seq int64, held *int64) bool {
	for i, r := range d.rows {
		if r.Seq == seq {
			*held -= int64(len(r.Payload))
			copy(d.rows[i:], d.rows[i+1:])
			d.rows[len(d.rows)-1] = nil
			d.rows = d.rows[:len(d.rows)-1]
			return true
		}
	}
	return false
}

// Release implements lease.Store.
func (l *Leases) Release(_ context.Context, owner string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range l.leased {
		if d := l.devs[id]; d != nil && d.owner == owner {
			l.free(id, d)
		}
	}
	return nil
}

var _ lease.Store = (*Leases)(nil)
