package sim

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/iotgw/iotgw/pkg/outbox"
)

var (
	flagSeed  = flag.Int64("seed", 0, "run this seed alone (0: run -seeds seeds from -first)")
	flagSeeds = flag.Int("seeds", 2000, "how many seeds to run")
	flagFirst = flag.Int64("first", 1, "the first seed")
	// flagPauseOnBreaker wires lease.Hooks.Paused as pkg/gateway does.
	flagPauseOnBreaker = flag.Bool("pause-on-breaker", false, "pause claims while the breaker is open, as the gateway did before the fix (stalls: see docs/SIMULATION.md)")
)

// TestSim runs the simulation for each seed, two at a time on a 2-core
// machine (t.Parallel), each in its own synctest bubble.
func TestSim(t *testing.T) {
	first, n := *flagFirst, int64(*flagSeeds)
	if *flagSeed != 0 {
		first, n = *flagSeed, 1
	}
	for seed := first; seed < first+n; seed++ {
		t.Run(strconv.FormatInt(seed, 10), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) { runSeed(t, seed) })
		})
	}
}

// runSeed runs one seed: traffic and faults for the plan's traffic
// period, then a quiet drain (faults off, the backend answering 2xx) until
// every delivery is acked and every row forwarded, then the final checks.
func runSeed(t *testing.T, seed int64) {
	p := newPlan(seed)
	ctx, cancel := context.WithCancel(context.Background())
	w := newWorld(ctx, p)
	fail := func(what string) {
		t.Helper()
		t.Fatalf("seed %d: %s\nplan: %v\n%s\nreplay: go test ./pkg/lease/sim -run TestSim -seed=%d -count=20 -failfast", seed, what, p, w.report(), seed)
	}
	for i := range p.gateways {
		s := &slot{changed: make(chan struct{})}
		w.slots = append(w.slots, s)
		s.set(w.startGateway(i, 1))
	}
	var bg sync.WaitGroup
	for _, d := range p.deliveries {
		bg.Go(func() { w.deliver(d) })
	}
	for _, c := range p.crashes {
		bg.Go(func() {
			if !sleep(ctx, c.at) {
				return
			}
			s := w.slots[c.gw]
			g := s.get(ctx)
			if g == nil { // the run ended first
				return
			}
			s.set(nil)
			w.mu.Lock()
			w.event("crash %s", g.name)
			w.mu.Unlock()
			g.crash()
			if !sleep(ctx, c.down) {
				return
			}
			s.set(w.startGateway(c.gw, 2))
		})
	}
	stop := func() {
		for _, s := range w.slots {
			s.mu.Lock()
			g := s.cur
			s.mu.Unlock()
			if g != nil {
				s.set(nil)
				g.shutdown()
			}
		}
		cancel()
		bg.Wait()
	}
	defer func() {
		if ctx.Err() == nil {
			stop()
		}
	}()

	// Traffic and faults; the invariants are checked at every step (each
	// POST and commit records its violations), read here every second.
	for w.since() < p.traffic {
		time.Sleep(time.Second)
		if w.failed() {
			stop()
			fail("invariant broken")
		}
	}
	w.mu.Lock()
	w.quiet = true
	w.mu.Unlock()
	w.kickAll()
	// Drain: liveness. Everything delivered is acked, and every row forwarded.
	deadline := w.since() + 30*time.Minute
	for {
		time.Sleep(time.Second)
		if w.failed() {
			stop()
			fail("invariant broken")
		}
		w.mu.Lock()
		acked := len(w.acked)
		w.mu.Unlock()
		rows := w.db.Rows()
		if acked == len(p.deliveries) && len(rows) == 0 {
			break
		}
		if w.since() > deadline {
			stop()
			fail(fmt.Sprintf("not drained 30 min after the faults stopped: %d of %d deliveries acked, %d rows pending (first: %s/%s)",
				acked, len(p.deliveries), len(rows), firstDev(rows), firstMsg(rows)))
		}
	}
	stop()
	// Every accepted message reached the backend at least once: it was
	// POSTed, and the backend took it (2xx or a final 4xx) or it was given
	// up after it was POSTed and is a dead letter, where an operator sees it.
	dead, err := w.db.Conn("check").DeadLetters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	buried := map[string]bool{}
	for _, d := range dead {
		buried[d.DeviceID+"/"+d.MessageID] = true
	}
	w.mu.Lock()
	var lost []string
	for k := range w.committed {
		if w.posted[k] == 0 || (w.processed[k] == 0 && !buried[k]) {
			lost = append(lost, fmt.Sprintf("%s (POSTs %d, taken %d, dead letter %v)", k, w.posted[k], w.processed[k], buried[k]))
		}
	}
	w.mu.Unlock()
	if len(lost) > 0 {
		fail(fmt.Sprintf("accepted messages that never reached the backend: %v", lost))
	}
	if w.failed() {
		fail("invariant broken")
	}
	if *flagSeed != 0 {
		w.mu.Lock()
		posts, dups := 0, 0
		for _, n := range w.posted {
			posts += n
		}
		for _, n := range w.dups {
			dups += n
		}
		t.Logf("seed %d: %v\n%d messages accepted, %d POSTs, %d duplicates, %d dead letters, ran %v of fake time\nlast events:\n  %s",
			seed, p, len(w.committed), posts, dups, len(w.db.DeadSeqs()), w.since(), strings.Join(w.events, "\n  "))
		w.mu.Unlock()
	}
}

func firstDev(rows []outbox.Record) string {
	if len(rows) == 0 {
		return ""
	}
	return rows[0].DeviceID
}

func firstMsg(rows []outbox.Record) string {
	if len(rows) == 0 {
		return ""
	}
	return rows[0].MessageID
}
