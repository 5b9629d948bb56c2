package sim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/lease/memstore"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// gateway is one incarnation of a gateway: a real lease.Forwarder and a
// real forward.Dispatcher posting to the simulated backend, and an accept
// path (a stand-in for validate + outbox.Writer) that checks freshness
// with the gateway's own clock, filters ids it has seen, and commits
// through the model, which is the replay authority. A crash ends it
// without any shutdown; its memory is lost with it.
type gateway struct {
	w     *world
	slot  int
	name  string // the lease owner, new for every incarnation
	conn  *memstore.Conn
	clock time.Duration // its wall clock's offset

	ctx    context.Context
	cancel context.CancelFunc
	inbox  chan *inbound
	seen   map[[16]byte]time.Time // the in-memory replay filter
	fwd    *lease.Forwarder
	disp   *forward.Dispatcher
	wg     sync.WaitGroup
}

func (w *world) startGateway(slot, inc int) *gateway {
	name := fmt.Sprintf("g%d.%d", slot, inc)
	g := &gateway{w: w, slot: slot, name: name, conn: w.db.Conn(name), clock: w.p.clock[slot],
		inbox: make(chan *inbound), seen: map[[16]byte]time.Time{}}
	g.ctx, g.cancel = context.WithCancel(w.ctx)
	p := w.p
	fcfg := forward.DefaultConfig()
	fcfg.Timeout, fcfg.Workers, fcfg.MaxAttempts = p.timeout, p.workers, p.maxAttempts
	fcfg.MaxPayloadMemory = p.maxPayloadMemory
	fcfg.BatchMax = p.batchMax
	backoff := func(attempt int) time.Duration { return min(200*time.Millisecond<<min(attempt, 6), 5*time.Second) }
	g.fwd = lease.New(tracedStore{Conn: g.conn, w: w, name: name}, name, lease.Config{Lease: p.lease, Timeout: p.timeout, MaxPayloadMemory: p.maxPayloadMemory},
		time.Now, zap.NewNop(), lease.Hooks{
			Submit: func(j *forward.Job) { g.disp.Submit(j) },
			// As the gateway (pkg/gateway/leased.go): claims pause while
			// the backend's breaker cools down, not while it waits for a
			// probe. -pause-on-breaker runs the old wiring, which paused
			// while it was open and stalled a gateway for good once its
			// dispatcher emptied with the breaker open (nothing left to
			// probe with): see docs/SIMULATION.md, "Found".
			Paused: func() bool {
				if *flagPauseOnBreaker {
					return g.disp.BreakerOpen()
				}
				return g.disp.BreakerCooling()
			},
		})
	g.disp = forward.NewDispatcher(fcfg, &backend{w: w, owner: name}, forward.NewBreaker(5, 2*time.Second, time.Now), backoff, time.Now, forward.Hooks{
		Settled: func(j *forward.Job, o forward.Outcome) {
			var dead *lease.Dead
			if o.Dead {
				msg := ""
				if o.Err != nil {
					msg = o.Err.Error()
				}
				dead = &lease.Dead{Attempts: j.Attempts, LastError: msg, At: time.Now()}
			}
			g.fwd.Settled(j, dead)
		},
		Admit: g.fwd.Admit,
		Load: func(ctx context.Context, j *forward.Job) ([]byte, error) {
			b, err := g.conn.Payload(ctx, j.Seq)
			if errors.Is(err, outbox.ErrNoRow) {
				return nil, fmt.Errorf("%w: %w", forward.ErrPayloadGone, err)
			}
			return b, err
		},
	})
	g.wg.Add(3)
	go func() { defer g.wg.Done(); g.fwd.Run(g.ctx) }()
	go func() { defer g.wg.Done(); g.disp.Run(g.ctx) }()
	go func() { defer g.wg.Done(); g.accept() }()
	g.wg.Add(1)
	go func() { defer g.wg.Done(); g.prune() }()
	return g
}

func (g *gateway) kick() { g.fwd.Kick() }

// now is the gateway's wall clock (offset from the fleet's).
func (g *gateway) now() time.Time { return time.Now().Add(g.clock) }

// crash ends the gateway at once: no Stop, no release, in-flight POSTs cut.
func (g *gateway) crash() {
	g.cancel()
	g.disp.Abort()
	g.wg.Wait()
}

// shutdown is a clean stop: the dispatcher drains, then the forwarder
// finishes what settled and releases its leases.
func (g *gateway) shutdown() {
	g.cancel()
	g.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g.fwd.Stop(ctx)
}

// accept handles deliveries one at a time, as the gateway's writer
// commits them: freshness by the gateway's clock, the in-memory replay
// filter, then a commit through the model that is retried until it
// answers (nothing is acked meanwhile). A refused record (a replay by the
// database's authority, or the device's quota) is acked and dropped.
func (g *gateway) accept() {
	for {
		var in *inbound
		select {
		case in = <-g.inbox:
		case <-g.ctx.Done():
			return
		}
		m := in.d.msg
		ts := g.w.start.Add(m.ts).Truncate(time.Second)
		now := g.now()
		verdict := ""
		counted := m.counter > 0 // counter mode: no clock, no memory filter; the commit's bound judges
		switch {
		case !counted && (ts.Before(now.Add(-g.w.p.window)) || ts.After(now.Add(g.w.p.window))):
			verdict = "stale"
		case !counted && !g.seen[m.key].IsZero() && g.seen[m.key].After(now):
			verdict = "replay (memory)"
		default:
			rec := &outbox.Record{DeviceID: m.dev, MessageID: m.id, Timestamp: strconv.FormatInt(ts.Unix(), 10), ID: m.key,
				Payload: m.payload, ReceivedAt: now, Expires: ts.Add(g.w.p.window)}
			if counted {
				rec.Timestamp, rec.Expires = outbox.CounterTimestamp(strconv.AppendInt(nil, m.counter, 10)), time.Time{}
			}
			delay := 50 * time.Millisecond
			for {
				res, err := g.conn.Commit(g.ctx, []*outbox.Record{rec}, nil, -1)
				if err == nil {
					switch {
					case len(res.Refused) == 0:
						verdict = "accepted"
						g.w.kickAll() // the NOTIFY every commit sends
					case res.Refused[0].Quota:
						verdict = "quota"
					case res.Refused[0].Counter:
						verdict = "replay (counter bound)"
					default:
						verdict = "replay (database)"
					}
					break
				}
				if !sleep(g.ctx, delay) {
					return
				}
				delay = min(2*delay, 5*time.Second)
			}
			if verdict != "quota" && !counted {
				g.seen[m.key] = rec.Expires
			}
		}
		g.w.mu.Lock()
		g.w.event("%s: %s %s (ts %v, its clock %v)", g.name, verdict, m, ts.Sub(g.w.start), now.Sub(g.w.start))
		g.w.mu.Unlock()
		close(in.ack)
	}
}

// prune is the gateway's periodic PruneSeen (the database's clock and
// the fleet-wide window; every gateway runs it).
func (g *gateway) prune() {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			g.conn.PruneSeen(g.ctx) //nolint:errcheck // retried at the next tick
		case <-g.ctx.Done():
			return
		}
	}
}

// tracedStore is the gateway's lease.Store as the forwarder sees it: the
// model's connection, with each answer written to the event trace.
type tracedStore struct {
	*memstore.Conn
	w    *world
	name string
}

func (s tracedStore) trace(format string, args ...any) {
	s.w.mu.Lock()
	s.w.event(s.name+": "+format, args...)
	s.w.mu.Unlock()
}

func (s tracedStore) Claim(ctx context.Context, owner string, devices, rows int, dur time.Duration) ([]lease.Claim, error) {
	cs, err := s.Conn.Claim(ctx, owner, devices, rows, dur)
	for _, c := range cs {
		seqs := make([]int64, len(c.Rows))
		for i, r := range c.Rows {
			seqs[i] = r.DSeq
		}
		s.trace("claimed %s epoch %d dseqs %v", c.Device, c.Epoch, seqs)
	}
	if err != nil {
		s.trace("claim: %v", err)
	}
	return cs, err
}

func (s tracedStore) Renew(ctx context.Context, owner string, leases []lease.Lease, dur time.Duration) ([]lease.Lease, error) {
	kept, err := s.Conn.Renew(ctx, owner, leases, dur)
	if err != nil || len(kept) != len(leases) {
		s.trace("renew %v: kept %v, %v", leases, kept, err)
	}
	return kept, err
}

func (s tracedStore) Finish(ctx context.Context, owner string, done []lease.Done, drained []lease.Lease) (int, error) {
	stale, err := s.Conn.Finish(ctx, owner, done, drained)
	var b strings.Builder
	for _, d := range done {
		fmt.Fprintf(&b, " %s#%d@%d", d.Device, d.Seq, d.Epoch)
		if d.Dead != nil {
			b.WriteString("(dead)")
		}
	}
	s.trace("finish%s drained %v: %d stale, %v", b.String(), drained, stale, err)
	return stale, err
}
