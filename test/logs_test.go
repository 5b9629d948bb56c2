package test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// logLines parses the gateway's JSON log.
func (g *gatewayProc) logLines() []map[string]any {
	g.t.Helper()
	b, err := os.ReadFile(g.logPath)
	if err != nil {
		g.t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range bytes.Split(b, []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(l, &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// waitLog waits for a log line for which match is true.
func (g *gatewayProc) waitLog(what string, match func(map[string]any) bool) map[string]any {
	g.t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, l := range g.logLines() {
			if match(l) {
				return l
			}
		}
	}
	b, _ := os.ReadFile(g.logPath)
	g.t.Fatalf("no log line %s in:\n%s", what, lastBytes(b, 6000))
	return nil
}

func msgIs(msg string) func(map[string]any) bool {
	return func(l map[string]any) bool { return l["msg"] == msg }
}

// TestLogs reads the JSON log of a real run at log.level debug: one
// component key per line; "started" before "ready", and "ready" only once
// the broker is connected; each message's outcome at debug, never its
// payload; the breaker's open (warn) and close (info); durations with
// units; a future timestamp worded as such.
func TestLogs(t *testing.T) {
	f := newFixture(t, "sensor-1")
	g := f.startGateway(gatewayOpts{})
	d := f.device("sensor-1")

	raw, okID := d.signed(`{"marker":"PAYLOAD-NEVER-LOGGED"}`, time.Now().Unix())
	d.publish("", raw)
	acc := g.waitLog("accepted", func(l map[string]any) bool { return l["msg"] == "accepted" && l["message_id"] == okID })
	if acc["level"] != "debug" || acc["device_id"] != "sensor-1" {
		t.Errorf("accepted line: %v", acc)
	}
	future, futID := d.signed(`{"marker":"PAYLOAD-NEVER-LOGGED"}`, time.Now().Unix()+600)
	d.publish("", future)
	rej := g.waitLog("rejected stale", func(l map[string]any) bool { return l["msg"] == "rejected" && l["message_id"] == futID })
	if rej["reason"] != "stale" || !strings.Contains(rej["detail"].(string), "in the future") || strings.Contains(rej["detail"].(string), "-") {
		t.Errorf("future timestamp line: %v", rej)
	}
	old, oldID := d.signed(`{}`, time.Now().Unix()-600)
	d.publish("", old)
	rej = g.waitLog("rejected old", func(l map[string]any) bool { return l["msg"] == "rejected" && l["message_id"] == oldID })
	if !strings.Contains(rej["detail"].(string), " old") {
		t.Errorf("old timestamp line: %v", rej)
	}

	// The backend goes away: the breaker opens (warn); it comes back: closes (info).
	f.backend.down()
	for range 8 {
		raw, _ := d.signed(`{}`, time.Now().Unix())
		d.publish("", raw)
	}
	if l := g.waitLog("breaker open", func(l map[string]any) bool { return strings.Contains(l["msg"].(string), "circuit breaker open") }); l["level"] != "warn" {
		t.Errorf("breaker open line: %v", l)
	}
	f.backend.up(t)
	if l := g.waitLog("breaker closed", func(l map[string]any) bool { return strings.Contains(l["msg"].(string), "circuit breaker closed") }); l["level"] != "info" {
		t.Errorf("breaker closed line: %v", l)
	}

	if code := g.signal(syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if l := g.waitLog("shutting down", msgIs("shutting down")); l["grace"] != "10s" {
		t.Errorf(`shutting down: grace = %#v, want "10s"`, l["grace"])
	}

	b, err := os.ReadFile(g.logPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("PAYLOAD-NEVER-LOGGED")) {
		t.Error("a payload is in the log")
	}
	started, ready := -1, -1
	for i, l := range bytes.Split(b, []byte("\n")) {
		if n := bytes.Count(l, []byte(`"component":`)); n > 1 {
			t.Errorf("log line with %d component keys: %s", n, l)
		}
		var m map[string]any
		if json.Unmarshal(l, &m) != nil {
			continue
		}
		switch m["msg"] {
		case "gateway started":
			started = i
		case "ready":
			if ready >= 0 {
				t.Errorf("ready logged twice")
			}
			ready = i
		}
	}
	if started < 0 || ready < started {
		t.Errorf(`want "gateway started" and then "ready": lines %d, %d`, started, ready)
	}
}

// TestReadyLoggedOnlyWhenConnected: with the broker down the gateway logs
// "gateway started" but not "ready"; "ready" follows once it is up.
func TestReadyLoggedOnlyWhenConnected(t *testing.T) {
	f := newFixture(t, "sensor-1")
	f.broker.Stop()
	g := f.startGatewayNoWait(gatewayOpts{})
	g.waitLog("started", msgIs("gateway started"))
	g.waitLog("a failed connect", msgIs("cannot connect to broker; retrying"))
	for _, l := range g.logLines() {
		if l["msg"] == "ready" || l["msg"] == "gateway ready" {
			t.Fatalf("logged %v while the broker is down", l)
		}
	}
	f.broker.Restart()
	g.waitLog("ready", msgIs("ready"))
}
