package test

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/test/harness"
)

// readyzStatus returns the status of GET /readyz, or 0 when it cannot be
// reached.
func (g *gatewayProc) readyzStatus() (int, string) {
	resp, err := httpClient.Get("http://" + g.http + "/readyz")
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestGatewayOnDeviceListenerFlaps (issue 16, item 8): mqtt.broker names
// the device listener (8883) instead of the gateway's (8884). There the
// broker gives both of the gateway's connections the certificate's CN as
// client id, so they knock each other off again and again. The gateway
// must say what that usually means, once, and /readyz must never say
// ready while it flaps.
func TestGatewayOnDeviceListenerFlaps(t *testing.T) {
	f := newFixture(t, "d1")
	g := f.startGatewayNoWait(gatewayOpts{edit: func(cfg string) string {
		return strings.Replace(cfg, "broker: "+f.broker.GatewayAddr, "broker: "+f.broker.Addr, 1)
	}})
	var ready, samples int
	hinted := false
	for i := 0; i < 600 && !(hinted && samples >= 100); i++ {
		select {
		case <-g.done:
			t.Fatalf("gateway exited: %v", g.waitErr)
		default:
		}
		if st, _ := g.readyzStatus(); st != 0 {
			samples++
			if st == 200 {
				ready++
			}
		}
		if !hinted {
			b, _ := os.ReadFile(g.logPath)
			hinted = strings.Contains(string(b), "keeps dropping right after connecting")
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(g.logPath)
	log := string(b)
	t.Logf("readyz: %d of %d samples ready; lost: %d; log hint: %v", ready, samples, strings.Count(log, "connection lost"), hinted)
	if n := strings.Count(log, "keeps dropping right after connecting"); n != 1 {
		t.Errorf("the log says what the flapping means %d times, want once", n)
	}
	if ready > 0 {
		t.Errorf("/readyz said ready %d of %d times while the connections knocked each other off", ready, samples)
	}
}

// TestGatewayExitsWithoutBroker (issue 16, item 11): a gateway that has
// been without its broker for mqtt.max_disconnected exits non-zero, with
// a log line naming the setting, so that any supervisor's restart policy
// recovers it (in compose: a gateway left in the dead network namespace
// of a restarted broker container). It does not exit while the broker is
// there: first it runs connected for twice max_disconnected; then the
// broker stops; and a gateway started with no broker at all exits too.
func TestGatewayExitsWithoutBroker(t *testing.T) {
	f := newFixture(t, "d1")
	withLimit := func(cfg string) string {
		return strings.Replace(cfg, "  max_reconnect_interval: 2s\n", "  max_reconnect_interval: 2s\n  max_disconnected: 3s\n", 1)
	}
	waitExit := func(g *gatewayProc, what string) {
		t.Helper()
		select {
		case <-g.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: the gateway still runs 60 s after losing its broker, with mqtt.max_disconnected 3s", what)
		}
		if code := g.cmd.ProcessState.ExitCode(); code != 1 {
			t.Errorf("%s: exit status %d, want 1", what, code)
		}
		b, _ := os.ReadFile(g.logPath)
		if !strings.Contains(string(b), "mqtt.max_disconnected") || !strings.Contains(string(b), "no broker connection") {
			t.Errorf("%s: no log line names mqtt.max_disconnected:\n%s", what, lastBytes(b, 2048))
		}
	}

	g := f.startGateway(gatewayOpts{edit: withLimit})
	time.Sleep(6 * time.Second) // twice max_disconnected, connected
	select {
	case <-g.done:
		t.Fatalf("the gateway exited while connected to its broker: %v", g.waitErr)
	default:
	}
	if st, body := g.readyzStatus(); st != 200 {
		t.Fatalf("/readyz %d %q while connected", st, body)
	}
	f.broker.Stop()
	waitExit(g, "broker stopped")

	dead := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	g = f.startGatewayNoWait(gatewayOpts{edit: func(cfg string) string {
		return withLimit(strings.Replace(cfg, "broker: "+f.broker.GatewayAddr, "broker: ssl://"+dead, 1))
	}})
	waitExit(g, "no broker at start")
}
