package test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	sdk "github.com/iotgw/iotgw/pkg/device"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/test/harness"
)

// timeLimits are the gateway's limits in the time request tests: the
// defaults' one answer (and one notice) per device per second, and no
// per-device rate limit on uplinks.
const timeLimits = "limits:\n  device_rate: 0\n  notice_interval: 1s\n"

// newNonce returns a fresh time request nonce.
func newNonce(t *testing.T) []byte {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return []byte(hex.EncodeToString(b[:]))
}

// downlinks collects what an SDK device receives on its response topic.
type downlinks struct {
	mu sync.Mutex
	rs []*sdk.Reply
	ok []bool // verified
}

func (d *downlinks) add(r *sdk.Reply, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rs = append(d.rs, r)
	d.ok = append(d.ok, err == nil)
}

// timeReplies counts the verified time replies received.
func (d *downlinks) timeReplies() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for i, r := range d.rs {
		if d.ok[i] && r.TimeFor != "" {
			n++
		}
	}
	return n
}

// wait returns the first verified downlink for which match is true,
// waiting up to timeout.
func (d *downlinks) wait(t *testing.T, timeout time.Duration, match func(*sdk.Reply) bool) *sdk.Reply {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		d.mu.Lock()
		for i, r := range d.rs {
			if d.ok[i] && match(r) {
				d.mu.Unlock()
				return r
			}
		}
		d.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no matching downlink in %s", timeout)
	return nil
}

// TestTimeRequests is signed time (docs/PROTOCOL.md, section 4c) end to
// end, with a real Mosquitto (the project's ACL) and a real iotgw serve:
//
//   - a device with no clock (its clock says 1970) has its first message
//     refused as stale; it asks for the time (SDK SyncTime) and its next
//     message is accepted and forwarded;
//   - the signed time reply, republished as an uplink on device/<id>/data,
//     is refused as bad_signature and never reaches the backend;
//   - a flood of time requests from one device gets at most about one
//     answer a second, the rest counted as limited, and another device
//     asking in the middle of the flood gets its answer;
//   - an unknown device (a certificate, no registration), a disabled one,
//     and a malformed request get no answer, counted as refused and
//     malformed;
//   - none of this is a rejection: the rejection counters and the audit
//     trail hold the stale message and the reflection, nothing else.
func TestTimeRequests(t *testing.T) {
	f := newFixture(t, "clk_001", "clk_002", "clk_off")
	harness.IssueDevice(t, f.certs, "clk_ghost") // a certificate, no registry entry
	func() {
		r, err := registry.Open(context.Background(), f.db)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if err := r.SetEnabled(context.Background(), "clk_off", false); err != nil {
			t.Fatal(err)
		}
	}()
	g := f.startGateway(gatewayOpts{limits: timeLimits})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const (
		answered  = `iotgw_time_requests_total{result="answered"}`
		limited   = `iotgw_time_requests_total{result="limited"}`
		refused   = `iotgw_time_requests_total{result="refused"}`
		malformed = `iotgw_time_requests_total{result="malformed"}`
	)

	// 1. A device whose clock started at 0 when it booted.
	var down downlinks
	cfg := f.sdkConfig("clk_001")
	boot := time.Now()
	cfg.Now = func() time.Time { return time.Unix(0, 0).Add(time.Since(boot)) }
	cfg.OnDownlink = down.add
	d := f.dialSDK(cfg)
	var rej *sdk.RejectedError
	if _, err := d.Request(ctx, []byte(`{"t":"before"}`)); !errors.As(err, &rej) || rej.Reason != "stale" {
		t.Fatalf("first message of a device without a clock: %v, want rejected as stale", err)
	}
	gw, err := d.SyncTime(ctx)
	if err != nil {
		t.Fatalf("SyncTime: %v", err)
	}
	if skew := time.Since(gw); skew < -time.Minute || skew > time.Minute {
		t.Fatalf("SyncTime gave %v, %v from this machine's clock", gw, skew)
	}
	if r, err := d.Request(ctx, []byte(`{"t":"after"}`)); err != nil || r.Status != 200 {
		t.Fatalf("message after SyncTime: %+v, %v; want forwarded, status 200", r, err)
	}
	f.backend.waitCount(t, 1, 10*time.Second)

	// 2. The time reply reflected as an uplink.
	reply := down.wait(t, 5*time.Second, func(r *sdk.Reply) bool { return r.TimeFor != "" })
	reflected, err := envelope.Parse(reply.Raw, envelope.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.PublishRaw(ctx, sdk.DataTopic("clk_001"), reply.Raw); err != nil {
		t.Fatal(err)
	}
	notice := down.wait(t, 10*time.Second, func(r *sdk.Reply) bool { return r.InReplyTo == string(reflected.MessageID) })
	if notice.Reason != "bad_signature" {
		t.Fatalf("reflected time reply: answered status %d, reason %q; want rejected as bad_signature", notice.Status, notice.Reason)
	}

	// 3. A flood of time requests from clk_001; clk_002 asks in the middle.
	d2 := f.device("clk_002")
	before, limitedBefore := g.metric(answered)+g.metric(limited), g.metric(limited)
	repliesBefore := down.timeReplies()
	const flood = 300
	start := time.Now()
	for i := range flood {
		if err := d.PublishRaw(ctx, sdk.TimeTopic("clk_001"), envelope.TimeRequest(newNonce(t))); err != nil {
			t.Fatal(err)
		}
		if i != flood/2 {
			continue
		}
		nonce := newNonce(t)
		d2.publish(envelope.TimeTopic("clk_002"), envelope.TimeRequest(nonce))
		r, ok := d2.nextReply(10 * time.Second)
		if !ok {
			t.Fatal("clk_002 got no answer during clk_001's flood")
		}
		if _, err := envelope.CheckTimeReply(envelope.NewDownlinkMAC([]byte(f.secrets["clk_002"])), "clk_002", r.raw, nonce); err != nil {
			t.Fatalf("clk_002's answer during the flood: %v (%s)", err, r.raw)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for g.metric(answered)+g.metric(limited)-before < flood+1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	got := g.metric(answered) + g.metric(limited) - before
	if got != flood+1 {
		t.Fatalf("%v time requests counted answered or limited, want %d", got, flood+1)
	}
	time.Sleep(quiet) // late answers
	answers := down.timeReplies() - repliesBefore
	maxAnswers := int(elapsed.Seconds()) + 2
	if answers > maxAnswers { // 0 when the flood took less than the second since SyncTime's answer
		t.Fatalf("clk_001 got %d answers to %d time requests in %s, want at most %d", answers, flood, elapsed, maxAnswers)
	}
	if lim := g.metric(limited) - limitedBefore; int(lim) != flood-answers {
		t.Fatalf("limited = %v, want %d (%d requests, %d answered)", lim, flood-answers, flood, answers)
	}
	t.Logf("flood: %d time requests in %s, %d answered, the rest limited", flood, elapsed.Round(time.Millisecond), answers)

	// 4. No answer for an unknown device, a disabled one, a malformed
	// request: counted, and silent.
	ghost, off := f.device("clk_ghost"), f.device("clk_off")
	ghost.publish(envelope.TimeTopic("clk_ghost"), envelope.TimeRequest(newNonce(t)))
	off.publish(envelope.TimeTopic("clk_off"), envelope.TimeRequest(newNonce(t)))
	g.waitMetric(refused, 2, 10*time.Second)
	d2.publish(envelope.TimeTopic("clk_002"), []byte(`{"nonce":"not hex"}`))
	g.waitMetric(malformed, 1, 10*time.Second)
	time.Sleep(quiet)
	for _, dev := range []*device{ghost, off, d2} {
		if len(dev.replies) != 0 {
			r := <-dev.replies
			t.Fatalf("%s got an answer: %s", dev.id, r.raw)
		}
	}

	// 5. Not rejections: the rejection counters hold the stale message and
	// the reflection only, the uplink counter the three messages.
	for _, reason := range []string{"malformed", "identity_mismatch", "unknown_device", "disabled", "key_unavailable", "stale", "bad_signature", "replay", "rate_limited", "quota_exceeded"} {
		want := 0.0
		if reason == "stale" || reason == "bad_signature" {
			want = 1
		}
		if n := g.metric(`iotgw_messages_rejected_total{reason="` + reason + `"}`); n != want {
			t.Errorf("rejected as %s: %v, want %v", reason, n, want)
		}
	}
	if n := len(f.backend.requests()); n != 1 {
		t.Errorf("the backend got %d requests, want 1 (the message after SyncTime)", n)
	}
	if n := g.metric("iotgw_messages_received_total"); n != 3 {
		t.Errorf("uplinks received: %v, want 3 (time requests are not uplinks)", n)
	}
	if code := g.signal(syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("gateway exit code %d after SIGTERM", code)
	}
	out, err := runCLI(f.bin, "", "audit", "tail", "--db", f.db, "-n", "1000")
	if err != nil {
		t.Fatalf("audit tail: %v\n%s", err, out)
	}
	var rejects []string
	for _, line := range strings.Split(out, "\n") {
		if fl := strings.Fields(line); len(fl) > 5 && fl[4] == "reject" {
			rejects = append(rejects, fl[3]+" "+fl[5])
		}
	}
	if strings.Join(rejects, ",") != "clk_001 stale,clk_001 bad_signature" {
		t.Errorf("audit trail rejections %q, want the stale message and the reflection only:\n%s", rejects, out)
	}
}
