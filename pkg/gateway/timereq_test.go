package gateway

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/validate"
)

// TestAnswerTime drives the gateway's time request handling (the part
// before the publish) on a fake clock: only a registered, enabled device
// gets an answer, which CheckTimeReply accepts for its nonce and no
// other; a second request within limits.notice_interval is limited, one
// a full interval later is answered; one device's limit does not touch
// another's. The answer is not a rejection: no rejection is counted and
// nothing reaches the audit trail.
func TestAnswerTime(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := testGatewayConfig(t, dir)
	cfg.Limits.QuarantineAfter = 1 // a time request counted as a bad signature would disable the device at once
	reg, err := registry.Open(ctx, cfg.Registry.Path)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{}
	for _, id := range []string{"d1", "d2", "off"} {
		s, _ := registry.NewSecret()
		if err := reg.Add(ctx, id, s); err != nil {
			t.Fatal(err)
		}
		secrets[id] = s
	}
	if err := reg.SetEnabled(ctx, "off", false); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	now := time.Unix(1_727_712_000, 0)
	g, err := New(ctx, cfg, zap.NewNop(), func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	defer g.close()

	nonce := []byte("00112233445566778899aabbccddeeff")
	other := []byte("ffeeddccbbaa99887766554433221100")
	req := envelope.TimeRequest(nonce)
	ask := func(dev string, payload []byte, wantResult, wantReason string) []byte {
		t.Helper()
		raw, result, reason := g.answerTime(ctx, dev, payload)
		if result != wantResult || reason != wantReason || (raw != nil) != (result == timeAnswered) {
			t.Fatalf("%s: answer %q, result %q, reason %q; want result %q, reason %q", dev, raw, result, reason, wantResult, wantReason)
		}
		return raw
	}
	check := func(dev string, raw []byte) {
		t.Helper()
		mac := envelope.NewDownlinkMAC([]byte(secrets[dev]))
		ts, err := envelope.CheckTimeReply(mac, dev, raw, nonce)
		if err != nil || ts != now.Unix() {
			t.Fatalf("%s: CheckTimeReply = %d, %v; want %d", dev, ts, err, now.Unix())
		}
		if _, err := envelope.CheckTimeReply(mac, dev, raw, other); !errors.Is(err, envelope.ErrTimeReplyOtherNonce) {
			t.Fatalf("%s: the answer checked for another nonce: %v, want ErrTimeReplyOtherNonce", dev, err)
		}
		if _, err := envelope.CheckTimeReply(envelope.NewMAC([]byte(secrets[dev])), dev, raw, nonce); !errors.Is(err, envelope.ErrTimeReplySignature) {
			t.Fatalf("%s: the answer verifies with the uplink key: %v", dev, err)
		}
		// Reflected as an uplink, it is a bad signature.
		res, err := g.validator.Check(ctx, dev, raw)
		if err != nil || res.Accepted() || res.Rejection.Reason != "bad_signature" {
			t.Fatalf("%s: the answer as an uplink: %+v, %v; want bad_signature", dev, res.Rejection, err)
		}
	}

	check("d1", ask("d1", req, timeAnswered, ""))
	for range 5 {
		ask("d1", req, timeLimited, timeLimited)
	}
	check("d2", ask("d2", req, timeAnswered, "")) // d1's limit is d1's alone
	now = now.Add(cfg.Limits.NoticeInterval - time.Nanosecond)
	ask("d1", envelope.TimeRequest(other), timeLimited, timeLimited)
	now = now.Add(time.Nanosecond)
	check("d1", ask("d1", req, timeAnswered, ""))

	ask("off", req, timeRefused, "disabled")
	ask("nobody", req, timeRefused, "unknown_device")
	for _, bad := range []string{"", "{}", `{"nonce":"00112233445566778899AABBCCDDEEFF"}`, `{"nonce":"00112233445566778899aabbccddeeff","x":1}`} {
		ask("d2", []byte(bad), timeMalformed, "malformed")
	}

	// Through timeRequest, as the workers call it (the publish fails: no
	// broker): every request is acked and counted by result, and none is
	// a rejection: nothing counted as rejected, no quarantine (after one
	// bad signature), no audit entry.
	acked := 0
	for _, m := range []struct{ dev, payload string }{
		{"d1", string(req)}, // answered at now: limited
		{"d2", string(req)}, // answered a second ago: answered
		{"off", string(req)},
		{"nobody", string(req)},
		{"d2", "not a time request"},
	} {
		g.timeRequest(ctx, mqttio.NewMessage(envelope.TimeTopic(m.dev), []byte(m.payload), func() { acked++ }))
	}
	if acked != 5 {
		t.Errorf("%d of 5 time requests acked", acked)
	}
	for result, want := range map[string]float64{timeAnswered: 1, timeLimited: 1, timeRefused: 2, timeMalformed: 1} {
		if n := counterValue(g.times.total.WithLabelValues(result)); n != want {
			t.Errorf("iotgw_time_requests_total{result=%q} = %v, want %v", result, n, want)
		}
	}
	for _, r := range validate.Reasons {
		if n := counterValue(g.metrics.rejected.WithLabelValues(string(r))); n != 0 {
			t.Errorf("%s rejections = %v, want 0: a time request is not a rejection", r, n)
		}
	}
	if n := counterValue(g.abuse.quarantined); n != 0 {
		t.Errorf("quarantined = %v", n)
	}
	if err := g.abuse.writer.Flush(ctx, true); err != nil {
		t.Fatal(err)
	}
	if n := g.abuse.writer.Written(); n != 0 {
		t.Errorf("%d audit entries written, want 0", n)
	}
}

// counterValue reads a counter.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
