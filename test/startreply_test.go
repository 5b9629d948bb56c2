package test

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestReplyForRowsPendingAtStart: rows left in the outbox by a stopped
// gateway (the backend answered 503) are forwarded as soon as the next
// gateway starts, and each device still gets its signed reply: forwarding
// waits for the reply connection, so the first replies are not dropped
// for want of it.
func TestReplyForRowsPendingAtStart(t *testing.T) {
	f := newFixture(t, "sr_dev")
	f.backend.setBehave(func(recorded) (int, string, time.Duration) { return 503, `{}`, 0 })
	g := f.startGateway(gatewayOpts{})
	d := f.device("sr_dev")
	want := map[string]bool{}
	for i := range 5 {
		raw, id := d.signed(fmt.Sprintf(`{"n":%d}`, i), time.Now().Unix())
		d.publish("", raw)
		want[id] = true
	}
	g.waitMetric(`iotgw_outbox_pending`, 5, 10*time.Second)
	if code := g.signal(syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("gateway exit %d", code)
	}
	f.backend.setBehave(nil)
	f.startGateway(gatewayOpts{})
	for range len(want) {
		r, ok := d.nextReply(10 * time.Second)
		if !ok {
			t.Fatalf("%d of 5 replies missing after the restart (backend got %d requests)", len(want), len(f.backend.requests()))
		}
		id, _ := replyPayload(t, r)["in_reply_to"].(string)
		if !r.valid || !want[id] {
			t.Fatalf("reply to %q (signature valid: %v), want one of the 5 pending messages", id, r.valid)
		}
		delete(want, id)
	}
	if n := len(f.backend.requests()); n < 5 {
		t.Fatalf("backend got %d requests, want the 5 pending", n)
	}
}
