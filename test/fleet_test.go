package test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
)

// fleetOpts is sharedOpts(dsn, n) with validation.max_clock_skew skew and
// replay ids pruned every second.
func fleetOpts(dsn string, n int, skew string) gatewayOpts {
	o := sharedOpts(dsn, n)
	o.extra += "validation:\n  max_clock_skew: " + skew + "\n"
	edit := o.edit
	o.edit = func(cfg string) string {
		return strings.Replace(edit(cfg), "outbox:\n", "outbox:\n  prune_interval: 1s\n", 1)
	}
	return o
}

// TestScaleFleetWindow is finding 1 of issue 15 end to end: gateway A
// (max_clock_skew 1m) accepted a message stamped now−58s and pruned its
// id, by its own window, a few seconds later; gateway B (5m, as during a
// rolling config change) then accepted a copy: the backend got one
// message twice. Now the window is the fleet's: B refuses to start with
// another value, naming both; after `iotgw fleet set-skew 5m` B starts,
// the id outlives A's 1m (pruning uses the fleet's window and the
// database's clock), and every copy is refused.
func TestScaleFleetWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := pgtest.New(t)
	f := newFixture(t, "fw-1")
	f.usePostgres(dsn)
	a := f.startGateway(fleetOpts(dsn, 0, "1m"))

	// 1. Another window: B refuses to start, in one line naming both.
	b := f.startGatewayNoWait(fleetOpts(dsn, 1, "5m"))
	select {
	case <-b.done:
	case <-time.After(20 * time.Second):
		t.Fatal("a gateway with another max_clock_skew than the fleet's started")
	}
	if code := b.cmd.ProcessState.ExitCode(); code == 0 {
		t.Fatalf("B exited %d, want non-zero", code)
	}
	log, _ := os.ReadFile(b.logPath)
	if !strings.Contains(string(log), "this gateway has 5m0s, the fleet sharing storage.dsn has 1m0s") {
		t.Fatalf("B's refusal does not name both windows:\n%s", lastBytes(log, 2048))
	}

	// 2. A accepts a message stamped now−58s: fresh by its 1m.
	d := f.device("fw-1")
	raw, id := d.signed(`{"x":1}`, time.Now().Add(-58*time.Second).Unix())
	d.publish("", raw)
	f.backend.waitCount(t, 1, 10*time.Second)

	// 3. The operator raises the fleet's window; B starts with it.
	if out := f.pgCLI("", "fleet", "set-skew", "5m"); !strings.Contains(out, "1m0s → 5m0s") {
		t.Fatalf("fleet set-skew said %q", out)
	}
	// 4. Past A's window: A's prune (every second) would have dropped the
	// id by A's 1m; the fleet's 5m keeps it.
	for end := time.Now().Add(15 * time.Second); a.metric(`iotgw_messages_rejected_total{reason="stale"}`) == 0; {
		if time.Now().After(end) {
			t.Fatal("A never found a copy stale")
		}
		d.publish("", raw) // a copy: a replay for A until it is 60 s old, then stale
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // several prunes
	b = f.startGateway(fleetOpts(dsn, 1, "5m"))
	for range 6 {
		d.publish("", raw)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && b.metric(`iotgw_messages_rejected_total{reason="replay"}`)+a.metric(`iotgw_messages_rejected_total{reason="stale"}`) < 7 {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	got := 0
	for _, r := range f.backend.requests() {
		if r.Header.Get("X-Message-Id") == id {
			got++
		}
	}
	if got != 1 {
		t.Fatalf("the backend got message %s %d times, want once", id, got)
	}
}

// TestScalePayloadMemoryZero is finding 3 of issue 15: with
// backend.max_payload_memory 0 on PostgreSQL, messages were accepted and
// acked but never claimed, and /readyz said ready. 0 means "read payloads
// when posting": every message is forwarded.
func TestScalePayloadMemoryZero(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := pgtest.New(t)
	f := newFixture(t, "pm-1")
	f.usePostgres(dsn)
	o := sharedOpts(dsn, 0)
	o.backendExtra = "  max_payload_memory: 0\n"
	f.startGateway(o)
	d := f.device("pm-1")
	for i := range 5 {
		raw, _ := d.signed(fmt.Sprintf(`{"i":%d}`, i), time.Now().Unix())
		d.publish("", raw)
	}
	checkOnceInOrder(t, f.backend.waitCount(t, 5, 15*time.Second), 5)
}
