package test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/test/harness"
)

// TestHappyPath: a signed reading reaches the backend byte for byte, with
// the documented headers and URL, and the device gets a signed reply.
func TestHappyPath(t *testing.T) {
	f := newFixture(t, "sensor_001")
	f.backend.setBehave(func(recorded) (int, string, time.Duration) { return 201, `{"stored": true}`, 0 })
	g := f.startGateway(gatewayOpts{})
	d := f.device("sensor_001")

	payload := "{ \"temperature\" : 22.5,\n \"unit\":\"°C\", \"note\":\"\\u00e9 ✓\" }"
	ts := time.Now().Unix()
	raw, msgID := d.signed(payload, ts)
	d.publish("", raw)

	req := f.backend.waitCount(t, 1, 10*time.Second)[0]
	if !bytes.Equal(req.Body, []byte(payload)) {
		t.Errorf("backend body = %q, want exact payload bytes %q", req.Body, payload)
	}
	if req.Path != "/ingest/sensor_001" {
		t.Errorf("path = %q, want /ingest/sensor_001", req.Path)
	}
	for k, want := range map[string]string{
		"Content-Type": "application/json", "X-Device-ID": "sensor_001", "X-Message-ID": msgID,
		"X-Device-Timestamp": fmt.Sprint(ts), "Idempotency-Key": msgID,
	} {
		if got := req.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	r, ok := d.nextReply(10 * time.Second)
	if !ok {
		t.Fatal("no reply on device/sensor_001/response")
	}
	if !r.valid {
		t.Fatalf("reply signature does not verify with the device secret: %s", r.raw)
	}
	if r.env.DeviceID != "sensor_001" || string(r.env.MessageID) == msgID {
		t.Errorf("reply device_id=%q message_id=%q: want the device and a fresh id", r.env.DeviceID, r.env.MessageID)
	}
	p := replyPayload(t, r)
	if p["in_reply_to"] != msgID || p["status"] != float64(201) {
		t.Errorf("reply payload = %v", p)
	}
	if body, _ := p["body"].(map[string]any); body["stored"] != true {
		t.Errorf("reply body = %v, want the backend's JSON", p["body"])
	}
	if v := g.metric("iotgw_messages_accepted_total"); v != 1 {
		t.Errorf("accepted = %v, want 1", v)
	}
}

// TestRejections: each attack or malformed message is rejected with its
// reason, counted, answered with a signed notice where there is a key, and
// never reaches the backend; a valid message still passes after each.
func TestRejections(t *testing.T) {
	f := newFixture(t, "sensor_001", "sensor_002")
	g := f.startGateway(gatewayOpts{})
	d := f.device("sensor_001")
	now := time.Now().Unix()
	accepted, msgID := d.signed(`{"t":1}`, now)
	d.publish("", accepted)
	f.backend.waitCount(t, 1, 10*time.Second)
	if r, ok := d.nextReply(5 * time.Second); !ok || !r.valid {
		t.Fatal("no valid reply to the first message")
	}

	tampered := bytes.Replace(mustSigned(d, `{"t":20}`, now), []byte(`"t":20`), []byte(`"t":99`), 1)
	otherID, _ := signAs("sensor_002", f.secrets["sensor_002"], `{"t":3}`, now)
	wrongSecret, _ := signAs("sensor_001", "0123456789abcdef0123456789abcdef", `{"t":4}`, now)
	valid := func(ts int64) []byte { b, _ := d.signed(`{"t":5}`, ts); return b }
	goodRaw, goodID := d.signed(`{"t":6}`, now)
	good := string(goodRaw)
	cases := []struct {
		name   string
		raw    []byte
		reason string
	}{
		{"replay", accepted, "replay"},
		{"tamper", tampered, "bad_signature"},
		{"stale", valid(now - 301), "stale"},
		{"future", valid(now + 360), "stale"},
		{"wrong secret", wrongSecret, "bad_signature"},
		{"identity mismatch", otherID, "identity_mismatch"},
		{"malformed: not JSON", []byte("hello"), "malformed"},
		{"malformed: unknown field", []byte(strings.Replace(good, `"payload"`, `"extra":1,"payload"`, 1)), "malformed"},
		{"malformed: missing field", []byte(strings.Replace(good, `"timestamp"`, `"timestamq"`, 1)), "malformed"},
		{"malformed: duplicate key", []byte(strings.Replace(good, `{"device_id":"sensor_001",`, `{"device_id":"sensor_001","device_id":"sensor_001",`, 1)), "malformed"},
		{"malformed: invalid UTF-8", []byte(strings.Replace(good, `{"t":6}`, "{\"t\":\"\xff\xfe\"}", 1)), "malformed"},
		{"malformed: too deep", []byte(strings.Replace(good, `{"t":6}`, strings.Repeat("[", 40)+strings.Repeat("]", 40), 1)), "malformed"},
		{"malformed: too large", []byte(strings.Replace(good, `{"t":6}`, `"`+strings.Repeat("a", 65600)+`"`, 1)), "malformed"},
		{"malformed: float timestamp", []byte(strings.Replace(good, fmt.Sprintf(`"timestamp":%d`, now), fmt.Sprintf(`"timestamp":%d.5`, now), 1)), "malformed"},
		{"malformed: uppercase signature", []byte(good[:len(good)-66] + strings.ToUpper(good[len(good)-66:])), "malformed"},
		{"malformed: millisecond timestamp", []byte(strings.Replace(good, fmt.Sprintf(`"timestamp":%d`, now), fmt.Sprintf(`"timestamp":%d123`, now), 1)), "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			series := fmt.Sprintf(`iotgw_messages_rejected_total{reason=%q}`, tc.reason)
			before := g.metric(series)
			forwarded := len(f.backend.requests())
			d.publish("", tc.raw)
			r, ok := d.nextReply(10 * time.Second)
			if !ok {
				t.Fatalf("no rejection notice")
			}
			if !r.valid {
				t.Fatalf("notice not signed with the device's secret: %s", r.raw)
			}
			p := replyPayload(t, r)
			if p["error"] != tc.reason {
				t.Fatalf("notice = %v, want error %q", p, tc.reason)
			}
			if tc.reason == "replay" && p["in_reply_to"] != msgID {
				t.Errorf("in_reply_to = %v, want %s", p["in_reply_to"], msgID)
			}
			// A malformed message is answered with its message_id when that
			// field itself was readable, else null.
			if tc.reason == "malformed" && p["in_reply_to"] != nil && p["in_reply_to"] != goodID {
				t.Errorf("in_reply_to = %v, want null or %s", p["in_reply_to"], goodID)
			}
			// A millisecond timestamp is malformed, but the message_id after
			// it was fine: the notice names it (issue 16, item 15).
			if tc.name == "malformed: millisecond timestamp" && p["in_reply_to"] != goodID {
				t.Errorf("in_reply_to = %v, want %s", p["in_reply_to"], goodID)
			}
			g.waitMetric(series, before+1, 5*time.Second)
			// A valid message still passes right after.
			d.publish("", valid(time.Now().Unix()))
			f.backend.waitCount(t, forwarded+1, 10*time.Second)
			if r, ok := d.nextReply(10 * time.Second); !ok || replyPayload(t, r)["status"] != float64(200) {
				t.Fatalf("valid message after %s not answered with status 200", tc.name)
			}
			if n := len(f.backend.requests()); n != forwarded+1 {
				t.Fatalf("backend got %d new requests, want exactly 1 (the valid one)", n-forwarded)
			}
		})
	}
}

func mustSigned(d *device, payload string, ts int64) []byte {
	b, _ := d.signed(payload, ts)
	return b
}

// TestUnknownAndDisabledDevice: a device with a valid certificate but no
// registry entry is rejected without a notice; disabling a device with the
// CLI takes effect in the running gateway within seconds.
func TestUnknownAndDisabledDevice(t *testing.T) {
	f := newFixture(t, "sensor_001")
	harness.IssueDevice(t, f.certs, "intruder")
	g := f.startGateway(gatewayOpts{})

	in := f.device("intruder")
	raw, _ := signAs("intruder", "0123456789abcdef0123456789abcdef", `{"x":1}`, time.Now().Unix())
	in.publish("", raw)
	g.waitMetric(`iotgw_messages_rejected_total{reason="unknown_device"}`, 1, 10*time.Second)
	if r, ok := in.nextReply(time.Second); ok {
		t.Errorf("unknown device got a reply: %s", r.raw)
	}

	d := f.device("sensor_001")
	out, err := runCLI(f.bin, "", "device", "disable", "sensor_001", "--db", f.db)
	if err != nil {
		t.Fatalf("iotgw device disable: %v\n%s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		raw, _ := d.signed(`{"x":2}`, time.Now().Unix())
		d.publish("", raw)
		r, ok := d.nextReply(5 * time.Second)
		if !ok {
			t.Fatal("no reply")
		}
		if replyPayload(t, r)["error"] == "disabled" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("device disable did not reach the gateway within 5 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestBrokerDeniesOtherTopicAndNoCert: the ACL drops a device's publish on
// another device's topic (the gateway never sees it), and a client without
// a certificate cannot connect.
func TestBrokerDeniesOtherTopicAndNoCert(t *testing.T) {
	f := newFixture(t, "sensor_001", "sensor_002")
	g := f.startGateway(gatewayOpts{})
	d1 := f.device("sensor_001")
	raw, _ := signAs("sensor_002", f.secrets["sensor_002"], `{"spoof":1}`, time.Now().Unix())
	d1.publish("device/sensor_002/data", raw)
	// Then a valid one, which must be the first and only thing received.
	ok, _ := d1.signed(`{"real":1}`, time.Now().Unix())
	d1.publish("", ok)
	f.backend.waitCount(t, 1, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	if n := g.metric("iotgw_messages_received_total"); n != 1 {
		t.Fatalf("gateway received %v messages, want 1 (the spoofed one must be denied by the ACL)", n)
	}
	if reqs := f.backend.requests(); len(reqs) != 1 || !bytes.Equal(reqs[0].Body, []byte(`{"real":1}`)) {
		t.Fatalf("backend got %d requests, want only the real one", len(reqs))
	}

	tlsCfg := harness.TLSConfig(t, f.certs, "sensor_001")
	tlsCfg.Certificates = nil
	opts := mqtt.NewClientOptions().AddBroker(f.broker.Addr).SetClientID("nocert").SetTLSConfig(tlsCfg).
		SetConnectTimeout(3 * time.Second).SetAutoReconnect(false)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		c.Disconnect(0)
		t.Fatal("client without a certificate connected")
	}
	_ = tls.VersionTLS12
}

// TestThousandMessagesExactlyOnce: 1,000 messages from several devices are
// each forwarded exactly once, and every device gets a reply per message.
func TestThousandMessagesExactlyOnce(t *testing.T) {
	ids := []string{"dev_a", "dev_b", "dev_c", "dev_d", "dev_e"}
	f := newFixture(t, ids...)
	g := f.startGateway(gatewayOpts{})
	const per = 200
	devs := make([]*device, len(ids))
	for i, id := range ids {
		devs[i] = f.device(id)
	}
	want := publishConcurrently(t, devs, per, func(d *device, i int) string { return fmt.Sprintf(`{"seq":%d}`, i) })
	f.backend.waitCount(t, len(ids)*per, 60*time.Second)
	time.Sleep(500 * time.Millisecond)
	reqs := f.backend.requests()
	seen := map[string]int{}
	for _, r := range reqs {
		seen[r.Header.Get("X-Message-ID")]++
	}
	for id := range want {
		if seen[id] != 1 {
			t.Errorf("message %s forwarded %d times, want 1", id, seen[id])
		}
	}
	if len(reqs) != len(want) {
		t.Errorf("backend got %d requests for %d messages", len(reqs), len(want))
	}
	for _, d := range devs {
		for i := range per {
			if r, ok := d.nextReply(10 * time.Second); !ok || !r.valid {
				t.Fatalf("%s: reply %d missing or unsigned", d.id, i)
			}
		}
	}
	if v := g.metric("iotgw_messages_accepted_total"); v != float64(len(want)) {
		t.Errorf("accepted = %v, want %d", v, len(want))
	}
}

// TestSIGTERMExitsZero: SIGTERM drains and exits 0.
func TestSIGTERMExitsZero(t *testing.T) {
	f := newFixture(t, "sensor_001")
	g := f.startGateway(gatewayOpts{})
	d := f.device("sensor_001")
	raw, _ := d.signed(`{"x":1}`, time.Now().Unix())
	d.publish("", raw)
	f.backend.waitCount(t, 1, 10*time.Second)
	if code := g.signal(syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0", code)
	}
}

// TestDeadLetters: a message the backend keeps refusing moves to the
// dead-letter table after backend.max_attempts; `iotgw deadletter retry`
// puts it back and the running gateway forwards it.
func TestDeadLetters(t *testing.T) {
	f := newFixture(t, "sensor_001")
	var mu sync.Mutex
	failing := true
	f.backend.setBehave(func(recorded) (int, string, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return 500, `{"error":"boom"}`, 0
		}
		return 200, `{"ok":true}`, 0
	})
	g := f.startGateway(gatewayOpts{maxAttempts: 3})
	d := f.device("sensor_001")
	raw, msgID := d.signed(`{"x":1}`, time.Now().Unix())
	d.publish("", raw)
	g.waitMetric(`iotgw_forward_total{result="dead"}`, 1, 20*time.Second)
	out, err := runCLI(f.bin, "", "deadletter", "list", "--outbox", f.outbox())
	if err != nil || !strings.Contains(out, msgID) || !strings.Contains(out, "500") {
		t.Fatalf("deadletter list: %v\n%s", err, out)
	}
	if out, err := runCLI(f.bin, "", "deadletter", "retry"); err == nil {
		t.Fatalf("retry without ids or --all should fail:\n%s", out)
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	if out, err := runCLI(f.bin, "", "deadletter", "retry", "--all", "--outbox", f.outbox()); err != nil || !strings.Contains(out, "1 dead letter(s) moved back") {
		t.Fatalf("deadletter retry: %v\n%s", err, out)
	}
	req := f.backend.waitCount(t, 1, 15*time.Second)[0]
	if req.Header.Get("X-Message-ID") != msgID {
		t.Fatalf("forwarded %s, want %s", req.Header.Get("X-Message-ID"), msgID)
	}
	out, _ = runCLI(f.bin, "", "deadletter", "list", "--outbox", f.outbox())
	if strings.Contains(out, msgID) {
		t.Fatalf("dead letter still listed after retry:\n%s", out)
	}
}

// TestBatchMode: with backend.batch_max > 1 messages from several devices
// share POSTs to batch_url, each arrives once with its exact bytes, and
// each device gets its own signed reply with its item's answer.
func TestBatchMode(t *testing.T) {
	ids := []string{"bat_a", "bat_b", "bat_c", "bat_d"}
	f := newFixture(t, ids...)
	f.startGateway(gatewayOpts{backendExtra: "  batch_max: 16\n  batch_linger: 5ms\n  batch_url: " + f.backend.URL + "/batch\n  workers: 1\n"})
	const per = 25
	devs := make([]*device, len(ids))
	for i, id := range ids {
		devs[i] = f.device(id)
	}
	want := publishConcurrently(t, devs, per, func(d *device, i int) string {
		return fmt.Sprintf(`{ "seq" : %d, "dev": "%s" }`, i, d.id)
	})
	f.backend.waitCount(t, len(want), 30*time.Second)
	time.Sleep(300 * time.Millisecond)
	reqs := f.backend.requests()
	if len(reqs) != len(want) {
		t.Errorf("backend got %d items for %d messages", len(reqs), len(want))
	}
	shared := 0
	for _, r := range reqs {
		id := r.Header.Get("X-Message-ID")
		if r.Path != "/batch" {
			t.Errorf("message %s posted to %s, want /batch", id, r.Path)
		}
		if string(r.Body) != want[id] {
			t.Errorf("message %s: body %q, want exact %q", id, r.Body, want[id])
		}
		delete(want, id)
		if r.Header.Get("X-Batch-Size") != "1" {
			shared++
		}
	}
	if len(want) != 0 {
		t.Errorf("%d messages never arrived", len(want))
	}
	if shared == 0 {
		t.Error("no POST carried more than one message")
	}
	for _, d := range devs {
		for i := range per {
			r, ok := d.nextReply(10 * time.Second)
			if !ok || !r.valid {
				t.Fatalf("%s: reply %d missing or unsigned", d.id, i)
			}
			p := replyPayload(t, r)
			if body, _ := p["body"].(map[string]any); p["status"] != float64(200) || body == nil || body["item"] == nil {
				t.Fatalf("%s: reply payload %v, want status 200 and the item's body", d.id, p)
			}
		}
	}
}

// publishConcurrently has every device publish per signed messages (QoS 1,
// waiting for each PUBACK) at the same time, with the payloads payload
// makes, and returns message id → payload.
func publishConcurrently(t *testing.T, devs []*device, per int, payload func(d *device, i int) string) map[string]string {
	t.Helper()
	want := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				p := payload(d, i)
				raw, id := d.signed(p, time.Now().Unix())
				mu.Lock()
				want[id] = p
				mu.Unlock()
				tok := d.c.Publish("device/"+d.id+"/data", 1, false, raw)
				if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Errorf("publish: %v", tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
	return want
}
