package test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/test/harness"
)

// gomaxprocs is the Go collector's series of the current GOMAXPROCS.
const gomaxprocs = "go_sched_gomaxprocs_threads"

// TestAdaptiveProcs: a real `iotgw serve` (pipeline.adaptive_procs, the
// default) goes to one P when idle and back to the runtime's default under
// an unpaced stream, without losing or repeating a message across the
// changes.
func TestAdaptiveProcs(t *testing.T) {
	adaptiveFlood(t, false)
}

// TestAdaptiveProcsBusyMachine: the same flood while busy loops take the
// machine's cores. On one P the gateway then gets a single thread's share
// of them: its CPU stays low (0.35–0.42 cores here), its goroutines'
// scheduling latency short, and the messages wait in the broker, not in
// the gateway. What shows it is the kernel's run-queue wait of its
// threads (procs.Config.UpWait; without that rule this test fails, still
// one P after a minute, as it did in CI with only the backlog rule).
func TestAdaptiveProcsBusyMachine(t *testing.T) {
	adaptiveFlood(t, true)
}

func adaptiveFlood(t *testing.T, busy bool) {
	devs := []string{"procs_1", "procs_2", "procs_3", "procs_4"}
	f := newFixture(t, devs...)
	// At info, not the fixture's debug: a line per message would make the
	// flood's backlog slow to drain on a busy machine.
	g := f.startGateway(gatewayOpts{edit: func(cfg string) string { return strings.Replace(cfg, "level: debug", "level: info", 1) }})
	start := g.waitLog("adaptive GOMAXPROCS: …", func(l map[string]any) bool {
		msg, _ := l["msg"].(string)
		return strings.HasPrefix(msg, "adaptive GOMAXPROCS")
	})
	d, ok := start["default"].(float64)
	if !ok {
		t.Fatalf("start line without an integer default: %v", start)
	}
	def := int(d)
	if def < 2 {
		t.Skipf("SKIPPED: the runtime's default GOMAXPROCS here is %d; nothing to adapt", def)
	}
	waitGauge(t, g, 1, 30*time.Second) // idle: one P after the Hold

	// An unpaced stream from four devices until the gateway is back on
	// the default (or the deadline: then the test fails below), at most
	// perDevice each: below outbox.max_pending_per_device (10,000), so
	// that every message must reach the backend, none refused for quota.
	const perDevice = 9000
	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if busy {
		for range runtime.NumCPU() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for x := 0; ; x++ {
					if x%1_000_000 == 0 {
						select {
						case <-stop:
							return
						default:
						}
					}
				}
			}()
		}
	}
	ids := sync.Map{}
	for _, id := range devs {
		c := harness.NewDeviceClient(t, f.broker, f.certs, id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var toks []mqtt.Token
			for n := 0; ; n++ {
				select {
				case <-stop:
					waitTokens(t, toks)
					return
				default:
				}
				if n == perDevice {
					waitTokens(t, toks)
					return
				}
				raw, msgID := signAs(id, f.secrets[id], fmt.Sprintf(`{"n":%d}`, n), time.Now().Unix())
				ids.Store(msgID, true)
				toks = append(toks, c.Publish("device/"+id+"/data", 1, false, raw))
				sent.Add(1)
				if len(toks) == 200 {
					waitTokens(t, toks)
					toks = toks[:0]
				}
			}
		}()
	}
	rose := waitGaugeOK(g, float64(def), 60*time.Second)
	close(stop)
	wg.Wait()
	if !rose {
		t.Fatalf("%s stayed below the default %d under an unpaced stream (%d messages sent)", gomaxprocs, def, sent.Load())
	}
	t.Logf("back on %d Ps after %d messages", def, sent.Load())

	// Nothing lost or repeated across the changes. The backlog drains at
	// the machine's pace: wait while it makes progress.
	n := int(sent.Load())
	reqs := f.backend.requests()
	for last, since := len(reqs), time.Now(); len(reqs) < n; reqs = f.backend.requests() {
		if len(reqs) > last {
			last, since = len(reqs), time.Now()
		} else if time.Since(since) > 30*time.Second {
			t.Fatalf("backend got %d requests of %d sent, none for 30 s", len(reqs), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	seen := map[string]bool{}
	for _, r := range reqs {
		id := r.Header.Get("X-Message-ID")
		if _, ok := ids.Load(id); !ok || seen[id] {
			t.Fatalf("backend got message %q: sent by the test %v, seen before %v", id, ok, seen[id])
		}
		seen[id] = true
	}
	if len(reqs) != n {
		t.Fatalf("backend got %d requests, %d sent", len(reqs), n)
	}
	g.signal(syscall.SIGINT, 15*time.Second)
}

// TestAdaptiveProcsOperatorGOMAXPROCS: with GOMAXPROCS set in its
// environment the gateway leaves it alone, idle or not.
func TestAdaptiveProcsOperatorGOMAXPROCS(t *testing.T) {
	f := newFixture(t, "procs_env")
	g := f.startGateway(gatewayOpts{env: []string{"GOMAXPROCS=2"}})
	g.waitLog("GOMAXPROCS set by the environment", msgIs("GOMAXPROCS set by the environment; pipeline.adaptive_procs stays off"))
	// Idle for longer than the Hold (2 s): still 2.
	time.Sleep(4 * time.Second)
	if v := g.metric(gomaxprocs); v != 2 {
		t.Fatalf("%s = %v with GOMAXPROCS=2 in the environment", gomaxprocs, v)
	}
	g.signal(syscall.SIGINT, 15*time.Second)
}

func waitTokens(t *testing.T, toks []mqtt.Token) {
	for _, tok := range toks {
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Errorf("publish: %v", tok.Error())
			return
		}
	}
}

// waitGauge waits until series gomaxprocs equals want.
func waitGauge(t *testing.T, g *gatewayProc, want float64, timeout time.Duration) {
	t.Helper()
	if !waitGaugeOK(g, want, timeout) {
		t.Fatalf("%s = %v, want %v within %s", gomaxprocs, g.metric(gomaxprocs), want, timeout)
	}
}

func waitGaugeOK(g *gatewayProc, want float64, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if g.metric(gomaxprocs) == want {
			return true
		}
	}
	return false
}
