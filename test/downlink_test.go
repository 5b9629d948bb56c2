package test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// TestReflectedDownlinkRejected is finding 2 of issue 9: an attacker with
// only a device's TLS credentials takes a signed downlink (a `malformed`
// notice, then a backend reply) from device/<id>/response and republishes
// it on device/<id>/data. Downlinks are signed with the downlink key, so
// each reflection is rejected as bad_signature and the backend gets
// nothing from it.
func TestReflectedDownlinkRejected(t *testing.T) {
	f := newFixture(t, "sensor_001")
	g := f.startGateway(gatewayOpts{})
	d := f.device("sensor_001")
	const badSig = `iotgw_messages_rejected_total{reason="bad_signature"}`

	// reflect republishes a downlink as an uplink and expects bad_signature.
	reflect := func(name string, downlink reply) {
		t.Helper()
		before := g.metric(badSig)
		d.publish("", downlink.raw)
		r, ok := d.nextReply(10 * time.Second)
		if !ok {
			t.Fatalf("%s reflected: no answer", name)
		}
		p := replyPayload(t, r)
		if p["error"] != "bad_signature" || p["in_reply_to"] != string(downlink.env.MessageID) {
			t.Fatalf("%s reflected: answer %v, want error bad_signature in reply to %s", name, p, downlink.env.MessageID)
		}
		g.waitMetric(badSig, before+1, 5*time.Second)
	}

	// 1. A malformed message earns a signed notice.
	d.publish("", []byte("hello"))
	notice, ok := d.nextReply(10 * time.Second)
	if !ok || !notice.valid || replyPayload(t, notice)["error"] != "malformed" {
		t.Fatalf("no valid malformed notice: %s", notice.raw)
	}
	reflect("notice", notice)
	if envelope.Verify(envelope.NewMAC([]byte(d.secret)), &notice.env) {
		t.Fatal("the notice verifies under the uplink key: downlinks are not domain-separated")
	}

	// 2. A valid message earns a signed backend reply.
	raw, id := d.signed(`{"t":1}`, time.Now().Unix())
	d.publish("", raw)
	f.backend.waitCount(t, 1, 10*time.Second)
	answer, ok := d.nextReply(10 * time.Second)
	if !ok || !answer.valid || replyPayload(t, answer)["in_reply_to"] != id {
		t.Fatalf("no valid reply to %s: %s", id, answer.raw)
	}
	reflect("reply", answer)

	// A last valid message: the backend has exactly the two genuine ones.
	raw, _ = d.signed(`{"t":2}`, time.Now().Unix())
	d.publish("", raw)
	reqs := f.backend.waitCount(t, 2, 10*time.Second)
	if r, ok := d.nextReply(10 * time.Second); !ok || replyPayload(t, r)["status"] != float64(200) {
		t.Fatal("no status 200 reply to the last message")
	}
	if n := len(f.backend.requests()); n != 2 {
		t.Fatalf("backend got %d requests, want 2: %v", n, reqs)
	}
	for _, r := range f.backend.requests() {
		if strings.Contains(string(r.Body), "in_reply_to") {
			t.Fatalf("a reflected downlink reached the backend: %s", r.Body)
		}
	}
}

// TestOversizeReplyTruncated is finding 6 of issue 9: a backend answering
// 60 KiB of '<' (or of invalid UTF-8) used to yield a reply over the
// broker's max_packet_size, which disconnected the gateway's reply
// connection. The reply is now truncated with a marker, verifies, and the
// next message's reply still arrives.
func TestOversizeReplyTruncated(t *testing.T) {
	f := newFixture(t, "sensor_001")
	bodies := map[string]string{
		`{"n":"lt"}`:      strings.Repeat("<", 60<<10),
		`{"n":"invalid"}`: strings.Repeat("\xff", 60<<10),
		`{"n":"control"}`: strings.Repeat("\x01", 60<<10),
	}
	f.backend.setBehave(func(r recorded) (int, string, time.Duration) {
		if b, ok := bodies[string(r.Body)]; ok {
			return 200, b, 0
		}
		return 200, `{"ok":true}`, 0
	})
	g := f.startGateway(gatewayOpts{backendExtra: "  max_response_bytes: 65536\n"})
	d := f.device("sensor_001")
	for _, payload := range []string{`{"n":"lt"}`, `{"n":"invalid"}`, `{"n":"control"}`, `{"n":"small"}`} {
		raw, id := d.signed(payload, time.Now().Unix())
		d.publish("", raw)
		r, ok := d.nextReply(15 * time.Second)
		if !ok {
			t.Fatalf("%s: no reply (reply connection lost?)", payload)
		}
		if !r.valid {
			t.Fatalf("%s: reply does not verify", payload)
		}
		if len(r.raw) > envelope.DefaultMaxBytes {
			t.Fatalf("%s: reply is %d bytes, over %d", payload, len(r.raw), envelope.DefaultMaxBytes)
		}
		var p struct {
			InReplyTo string          `json:"in_reply_to"`
			Status    int             `json:"status"`
			Body      json.RawMessage `json:"body"`
			Truncated bool            `json:"truncated"`
		}
		if err := json.Unmarshal(r.env.Payload, &p); err != nil {
			t.Fatalf("%s: reply payload: %v", payload, err)
		}
		if p.InReplyTo != id || p.Status != 200 {
			t.Fatalf("%s: reply to %s status %d, want %s 200", payload, p.InReplyTo, p.Status, id)
		}
		// 60 KiB of '<' fits as it is; 60 KiB of invalid UTF-8 (U+FFFD, 3
		// bytes each) or of control characters (\u0001, 6 bytes) does not.
		cut := payload == `{"n":"invalid"}` || payload == `{"n":"control"}`
		if p.Truncated != cut {
			t.Fatalf("%s: truncated = %v, want %v", payload, p.Truncated, cut)
		}
		if b, ok := bodies[payload]; ok {
			var s string
			if err := json.Unmarshal(p.Body, &s); err != nil {
				t.Fatalf("%s: body is not a string: %v", payload, err)
			}
			want := b
			if payload == `{"n":"invalid"}` {
				want = strings.Repeat("\uFFFD", len(b)) // one U+FFFD per invalid byte
			}
			if cut && (len(s) < 10<<10 || !strings.HasPrefix(want, s)) || !cut && s != want {
				t.Fatalf("%s: body of %d bytes is not the answer (cut: %v)", payload, len(s), cut)
			}
		}
	}
	if v := g.metric("iotgw_reply_publish_errors_total"); v != 0 {
		t.Errorf("reply publish errors = %v, want 0", v)
	}
}

// TestOneSpellingE2E is finding 8 of issue 9 end to end: a message whose
// member name or device_id is spelled with an escape (and so verifies with
// the plain message's signature), or whose payload holds an unpaired
// surrogate escape, is malformed, answered with a signed notice and never
// reaches the backend.
func TestOneSpellingE2E(t *testing.T) {
	f := newFixture(t, "sensor_001")
	f.startGateway(gatewayOpts{})
	d := f.device("sensor_001")
	now := time.Now().Unix()
	signed := func(payload string) string { raw, _ := d.signed(payload, now); return string(raw) }
	cases := []struct{ name, raw string }{
		{"escaped device_id", strings.Replace(signed(`{"t":1}`), `"device_id":"sensor_001"`, `"device_id":"sensor\u005f001"`, 1)},
		{"escaped member name", strings.Replace(signed(`{"t":2}`), `"device_id"`, `"device\u005fid"`, 1)},
		{"lone high surrogate", signed(`{"note":"\ud800"}`)},
		{"lone low surrogate", signed(`{"note":"x\udc00"}`)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d.publish("", []byte(tc.raw))
			r, ok := d.nextReply(10 * time.Second)
			if !ok || !r.valid {
				t.Fatalf("no valid notice")
			}
			if p := replyPayload(t, r); p["error"] != "malformed" {
				t.Fatalf("answer %v, want error malformed", p)
			}
		})
	}
	raw, _ := d.signed(`{"t":3}`, time.Now().Unix())
	d.publish("", raw)
	f.backend.waitCount(t, 1, 10*time.Second)
	if r, ok := d.nextReply(10 * time.Second); !ok || replyPayload(t, r)["status"] != float64(200) {
		t.Fatal("no status 200 reply to the valid message")
	}
	if reqs := f.backend.requests(); len(reqs) != 1 || string(reqs[0].Body) != `{"t":3}` {
		t.Fatalf("backend got %d requests, want only the valid one", len(reqs))
	}
}
