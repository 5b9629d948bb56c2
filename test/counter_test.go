package test

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/test/harness"
)

// Counter mode end to end (issue 17; docs/PROTOCOL.md, section 2a): real
// Mosquitto with the project's TLS config and ACL, real `iotgw serve`,
// devices registered with the CLI.

// addCounterDevice issues a certificate and registers id in counter mode
// through the CLI, on the fixture's engine.
func (f *fixture) addCounterDevice(id string) string {
	f.t.Helper()
	harness.IssueDevice(f.t, f.certs, id)
	secret, err := registry.NewSecret()
	if err != nil {
		f.t.Fatal(err)
	}
	if f.pgDSN != "" {
		f.pgCLI(secret+"\n", "device", "add", id, "--secret-stdin", "--freshness", "counter")
	} else if out, err := runCLI(f.bin, secret+"\n", "device", "add", id, "--db", f.db, "--secret-stdin", "--freshness", "counter"); err != nil {
		f.t.Fatalf("device add --freshness counter: %v\n%s", err, out)
	}
	f.secrets[id] = secret
	return secret
}

// counterMsg returns a counter-mode message of device id signed with secret.
func counterMsg(id, secret, payload string, c int64) []byte {
	e := envelope.NewCounter([]byte(secret), id, c, string(envelope.NewMessageID()), []byte(payload))
	return envelope.AppendJSON(nil, &e)
}

// verdict waits for d's next downlink that verifies under secret and
// returns its error code, or "ok" for a forward; it fails the test after
// timeout.
func (d *device) verdict(secret string, timeout time.Duration) string {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r, ok := d.nextReply(time.Until(deadline))
		if !ok {
			d.t.Fatalf("%s: no verified downlink within %v", d.id, timeout)
		}
		if !envelope.Verify(envelope.NewDownlinkMAC([]byte(secret)), &r.env) {
			continue
		}
		p := replyPayload(d.t, r)
		if e, ok := p["error"].(string); ok {
			return e
		}
		return "ok"
	}
}

// TestCounterMode: a counter-mode device's messages are accepted in
// counter order and forwarded with X-Device-Counter; every earlier
// counter is a replay for ever (across a kill -9 too); a timestamp-mode
// message from it is malformed; a device switched from timestamp to
// counter mode cannot replay its timestamp-mode messages, not even renamed;
// reset-counter takes a new secret, is audited, and the old secret's
// messages stay dead.
func TestCounterMode(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := newFixture(t, "clock-1")
	secret := f.addCounterDevice("meter-1")
	g := f.startGateway(gatewayOpts{})
	d := f.device("meter-1")

	// 1. Counters 1, 2, 5 (a gap) are accepted and forwarded in order.
	var sent [][]byte
	for _, c := range []int64{1, 2, 5} {
		raw := counterMsg("meter-1", secret, fmt.Sprintf(`{"c":%d}`, c), c)
		sent = append(sent, raw)
		d.publish("", raw)
		if v := d.verdict(secret, 10*time.Second); v != "ok" {
			t.Fatalf("counter %d: %s", c, v)
		}
	}
	reqs := f.backend.waitCount(t, 3, 10*time.Second)
	for i, want := range []string{"1", "2", "5"} {
		if got := reqs[i].Header.Get("X-Device-Counter"); got != want || reqs[i].Header.Get("X-Device-Timestamp") != "" {
			t.Fatalf("request %d: X-Device-Counter %q, X-Device-Timestamp %q; want %s and none", i, got, reqs[i].Header.Get("X-Device-Timestamp"), want)
		}
	}

	// 2. Replays of every earlier message, and a new message with an old
	// counter, are refused.
	for i, raw := range sent {
		d.publish("", raw)
		if v := d.verdict(secret, 10*time.Second); v != "replay" {
			t.Fatalf("replay of message %d: %s, want replay", i, v)
		}
	}
	d.publish("", counterMsg("meter-1", secret, `{"c":"new but old"}`, 4))
	if v := d.verdict(secret, 10*time.Second); v != "replay" {
		t.Fatalf("a new message with counter 4 below 5: %s, want replay", v)
	}

	// 3. A timestamp-mode message from a counter-mode device: malformed.
	ts, _ := signAs("meter-1", secret, `{"t":1}`, time.Now().Unix())
	d.publish("", ts)
	if v := d.verdict(secret, 10*time.Second); v != "malformed" {
		t.Fatalf("a timestamp-mode message from a counter-mode device: %s, want malformed", v)
	}

	// 4. clock-1 sends a timestamp-mode message, then is switched to
	// counter mode: the message, as it is or with its timestamp renamed
	// to a counter (a counter far above any bound), is refused.
	c := f.device("clock-1")
	old, _ := c.signed(`{"t":2}`, time.Now().Unix())
	c.publish("", old)
	if v := c.verdict(c.secret, 10*time.Second); v != "ok" {
		t.Fatalf("clock-1's timestamp-mode message: %s", v)
	}
	if out, err := runCLI(f.bin, "", "device", "set-freshness", "clock-1", "counter", "--db", f.db, "--outbox", f.outbox()); err != nil || !strings.Contains(out, "now uses counter freshness") {
		t.Fatalf("set-freshness: %v\n%s", err, out)
	}
	verdicts := map[string]int{}
	for range 50 { // until the gateway's registry refresh (200 ms) applied the switch
		c.publish("", old)
		v := c.verdict(c.secret, 10*time.Second)
		verdicts[v]++
		if v == "malformed" {
			break
		}
		if v != "replay" {
			t.Fatalf("the old message after the switch: %s", v)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if verdicts["malformed"] != 1 {
		t.Fatalf("the switch never applied: %v", verdicts)
	}
	renamed := []byte(strings.Replace(string(old), `"timestamp":`, `"counter":`, 1))
	c.publish("", renamed)
	if v := c.verdict(c.secret, 10*time.Second); v != "bad_signature" {
		t.Fatalf("the old message with its timestamp renamed to a counter: %s, want bad_signature", v)
	}
	if n := len(f.backend.requests()); n != 4 {
		t.Fatalf("backend got %d requests, want 4", n)
	}

	// 5. kill -9 and restart: the bound survives.
	g.kill()
	g = f.startGateway(gatewayOpts{})
	d.publish("", sent[2])
	if v := d.verdict(secret, 15*time.Second); v != "replay" {
		t.Fatalf("counter 5 after kill -9: %s, want replay", v)
	}
	d.publish("", counterMsg("meter-1", secret, `{"c":6}`, 6))
	if v := d.verdict(secret, 10*time.Second); v != "ok" {
		t.Fatalf("counter 6 after kill -9: %s", v)
	}

	// 6. reset-counter: a new secret, the bound back to 0, audited.
	out, err := exec.Command(f.bin, "device", "reset-counter", "meter-1", "--db", f.db, "--outbox", f.outbox()).Output()
	if err != nil {
		t.Fatalf("reset-counter: %v", err)
	}
	fresh := strings.TrimSpace(string(out))
	if !registry.ValidSecret(fresh) || fresh == secret {
		t.Fatalf("reset-counter printed %q, want a new secret", fresh)
	}
	dn := d // the same connection; its downlinks are now signed under the new secret
	accepted := false
	for range 50 { // until the registry refresh gave the gateway the new key
		dn.publish("", counterMsg("meter-1", fresh, `{"c":"after reset"}`, 1))
		r, ok := dn.nextReply(10 * time.Second)
		if !ok {
			t.Fatal("no downlink after reset-counter")
		}
		if envelope.Verify(envelope.NewDownlinkMAC([]byte(fresh)), &r.env) {
			if p := replyPayload(t, r); p["error"] != nil {
				t.Fatalf("counter 1 under the new secret: %v", p["error"])
			}
			accepted = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !accepted {
		t.Fatal("counter 1 under the new secret was never accepted")
	}
	dn.publish("", counterMsg("meter-1", secret, `{"c":"old secret"}`, 99))
	for {
		r, ok := dn.nextReply(10 * time.Second)
		if !ok {
			t.Fatal("no notice for the old secret's message")
		}
		if envelope.Verify(envelope.NewDownlinkMAC([]byte(fresh)), &r.env) {
			if p := replyPayload(t, r); p["error"] != "bad_signature" {
				t.Fatalf("a message under the old secret after the reset: %v, want bad_signature", p)
			}
			break
		}
	}
	audit, err := runCLI(f.bin, "", "audit", "tail", "--device", "meter-1", "--db", f.db)
	if err != nil || !strings.Contains(audit, "device.reset_counter") || !strings.Contains(audit, "bound 6 reset to 0") {
		t.Fatalf("audit trail lacks the reset: %v\n%s", err, audit)
	}
	if n := len(f.backend.requests()); n != 6 {
		t.Fatalf("backend got %d requests, want 6", n)
	}
	_ = g
}

// TestCounterTwoGateways: two gateways sharing PostgreSQL, both subscribed
// to every device's messages (no share group), receive every copy of
// every counter; each counter reaches the backend exactly once.
func TestCounterTwoGateways(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := pgtest.New(t)
	f := newFixture(t)
	f.usePostgres(dsn)
	secret := f.addCounterDevice("meter-2")
	plain := func(n int) gatewayOpts {
		o := sharedOpts(dsn, n)
		edit := o.edit
		o.edit = func(cfg string) string {
			return strings.Replace(edit(cfg), "  share_group: scale-test-7c2e91b4\n", "", 1)
		}
		return o
	}
	a := f.startGateway(plain(0))
	b := f.startGateway(plain(1))
	d := f.device("meter-2")
	const n = 60
	for c := int64(1); c <= n; c++ {
		d.publish("", counterMsg("meter-2", secret, fmt.Sprintf(`{"c":%d}`, c), c))
	}
	// Each counter gets two verdicts: one forward and one replay.
	counts := map[string]int{}
	for range 2 * n {
		counts[d.verdict(secret, 30*time.Second)]++
	}
	if counts["ok"] != n || counts["replay"] != n {
		t.Fatalf("verdicts %v, want %d ok and %d replay", counts, n, n)
	}
	seen := map[string]int{}
	for _, r := range f.backend.requests() {
		seen[r.Header.Get("X-Device-Counter")]++
	}
	for c := 1; c <= n; c++ {
		if seen[strconv.Itoa(c)] != 1 {
			t.Fatalf("counter %d reached the backend %d times, want once (all: %v)", c, seen[strconv.Itoa(c)], seen)
		}
	}
	for _, g := range []*gatewayProc{a, b} {
		if g.metric(`iotgw_messages_rejected_total{reason="replay"}`) == 0 {
			t.Logf("gateway %s refused no copy (the other won every race)", g.http)
		}
	}
}

// TestCounterResetWhileCached: reset-counter issues a new key and sets
// the bound back to 0 while a running gateway still holds the old key in
// its registry cache (registry.refresh 1m here, the longest allowed).
// The old key's messages must stay dead: a captured one replayed, and a
// new one from the old key's holder (the lost or cloned board) trying to
// push the bound to the top, are both replays, and the device's new key
// then starts at counter 1. Without the reset floor (the key the reset
// issued, kept with the bound), the replays were accepted and the bound
// poisoned.
func TestCounterResetWhileCached(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := newFixture(t)
	secret := f.addCounterDevice("meter-4")
	f.startGateway(gatewayOpts{edit: func(cfg string) string {
		return strings.Replace(cfg, "refresh: 200ms", "refresh: 1m", 1) // the longest allowed
	}})
	d := f.device("meter-4")
	var captured [][]byte
	for c := int64(1); c <= 3; c++ {
		raw := counterMsg("meter-4", secret, fmt.Sprintf(`{"c":%d}`, c), c)
		captured = append(captured, raw)
		d.publish("", raw)
		if v := d.verdict(secret, 10*time.Second); v != "ok" {
			t.Fatalf("counter %d: %s", c, v)
		}
	}
	out, err := exec.Command(f.bin, "device", "reset-counter", "meter-4", "--db", f.db, "--outbox", f.outbox()).Output()
	if err != nil {
		t.Fatalf("reset-counter: %v", err)
	}
	fresh := strings.TrimSpace(string(out))
	for i, raw := range captured {
		d.publish("", raw)
		if v := d.verdict(secret, 10*time.Second); v != "replay" {
			t.Fatalf("captured counter %d replayed right after the reset, old key still cached: %s, want replay", i+1, v)
		}
	}
	d.publish("", counterMsg("meter-4", secret, `{"c":"poison"}`, envelope.MaxCounter))
	if v := d.verdict(secret, 10*time.Second); v != "replay" {
		t.Fatalf("the old key's holder sending the top counter after the reset: %s, want replay", v)
	}
	d.publish("", counterMsg("meter-4", fresh, `{"c":"new board"}`, 1))
	if v := d.verdict(fresh, 10*time.Second); v != "ok" {
		t.Fatalf("counter 1 under the new key: %s", v)
	}
	if n := len(f.backend.waitCount(t, 4, 10*time.Second)); n != 4 {
		t.Fatalf("backend got %d requests, want 4", n)
	}
	time.Sleep(300 * time.Millisecond) // a wrongly accepted message would land meanwhile
	if n := len(f.backend.requests()); n != 4 {
		t.Fatalf("backend got %d requests, want 4 (counters 1-3, then the new key's 1)", n)
	}
}

// TestCounterKill9Stream: a counter-mode device streams while the gateway
// is killed with SIGKILL twice and restarted: every counter reaches the
// backend (nothing lost), and afterwards every counter is a replay (the
// bound survived every crash).
func TestCounterKill9Stream(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := newFixture(t)
	secret := f.addCounterDevice("meter-3")
	g := f.startGateway(gatewayOpts{})
	p := f.publisher("meter-3")
	const n = 300
	var restarts []time.Time
	for c := int64(1); c <= n; c++ {
		p.send(t, counterMsg("meter-3", secret, fmt.Sprintf(`{"c":%d}`, c), c))
		if c == n/3 || c == 2*n/3 {
			g.kill()
			// As in TestFaultKill9: a POST of the killed process may still be
			// read by the backend a moment after SIGKILL, so the line
			// between the two processes is drawn a while later, right
			// before the next one starts.
			time.Sleep(200 * time.Millisecond)
			restarts = append(restarts, time.Now())
			g = f.startGateway(gatewayOpts{})
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	var arrivals map[string][]time.Time
	for {
		arrivals = map[string][]time.Time{}
		for _, r := range f.backend.requests() {
			c := r.Header.Get("X-Device-Counter")
			arrivals[c] = append(arrivals[c], r.At)
		}
		if len(arrivals) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Nothing lost, and a counter posted twice only in the documented
	// at-least-once window (docs/RELIABILITY.md, as in TestFaultKill9): a
	// POST answered just before a kill whose row's delete had not yet
	// committed, posted again by the restarted process. A counter accepted
	// twice would show as a second POST with no restart between, or a
	// third. How many fall in the window depends on the commit linger and
	// the batched deletes, so the count is reported, not bounded.
	dup := 0
	for c := 1; c <= n; c++ {
		at := arrivals[strconv.Itoa(c)]
		switch {
		case len(at) == 0:
			t.Errorf("counter %d lost", c)
		case len(at) == 2 && straddles(at[0], at[1], restarts):
			dup++
		case len(at) > 1:
			t.Errorf("counter %d reached the backend %d times outside a crash window: %v (restarts %v)", c, len(at), at, restarts)
		}
	}
	fmt.Printf("scenario %-28s sent=%d forwarded=%d duplicate=%d lost=%d\n", "counter kill -9 x2", n, len(arrivals), dup, n-len(arrivals))
	p.c.Disconnect(100) // one connection per device: the next one would take over
	d := f.device("meter-3")
	for _, c := range []int64{1, n / 3, n} {
		d.publish("", counterMsg("meter-3", secret, `{"again":true}`, c))
		if v := d.verdict(secret, 10*time.Second); v != "replay" {
			t.Fatalf("counter %d after the crashes: %s, want replay", c, v)
		}
	}
}

// straddles reports whether a restart falls between two arrivals: the
// first from the killed process (its bytes may reach the backend a moment
// after SIGKILL, so the bound is the restart, not the kill), the second
// from its successor.
func straddles(first, second time.Time, restarts []time.Time) bool {
	for _, r := range restarts {
		if first.Before(r) && second.After(r) {
			return true
		}
	}
	return false
}
