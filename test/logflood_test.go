package test

import (
	"bytes"
	"os"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestRejectionFloodLogBounded: a device with only its TLS credentials
// floods messages the gateway rejects before the rate limiter (malformed,
// identity_mismatch). Each is still counted, but the gateway's log gets
// at most about one info line per device, reason and second, as for
// rate_limited: the rest go to debug (the fixture logs at debug; a
// production gateway logs at info), so a flood cannot fill the disk
// through the log.
func TestRejectionFloodLogBounded(t *testing.T) {
	const flood = 3000
	f := newFixture(t, "flooder", "sensor_b")
	g := f.startGateway(gatewayOpts{limits: defaultLimits})
	flooder := f.device("flooder")

	start := time.Now()
	toks := make([]mqtt.Token, 0, flood)
	for i := range flood {
		raw := []byte("not json")
		if i%2 == 1 { // well formed, but names another device
			raw, _ = signAs("sensor_b", f.secrets["sensor_b"], `{"n":1}`, time.Now().Unix())
		}
		toks = append(toks, flooder.c.Publish("device/flooder/data", 1, false, raw))
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
			t.Fatalf("flood message %d not acked by the broker: %v", i, tok.Error())
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	var judged float64
	for time.Now().Before(deadline) {
		judged = g.metric(`iotgw_messages_rejected_total{reason="malformed"}`) + g.metric(`iotgw_messages_rejected_total{reason="identity_mismatch"}`)
		if judged >= flood {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(start)
	if judged != flood {
		t.Fatalf("%v of %d flood messages counted as rejected", judged, flood)
	}
	b, err := os.ReadFile(g.logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	for _, l := range bytes.Split(b, []byte("\n")) {
		if bytes.Contains(l, []byte(`"level":"info"`)) && bytes.Contains(l, []byte(`"msg":"rejected"`)) && bytes.Contains(l, []byte(`"device_id":"flooder"`)) {
			lines++
		}
	}
	// Two reasons, at most one line each per second (plus the clock edges).
	if maxLines := 2 * (int(elapsed.Seconds()) + 2); lines > maxLines {
		t.Fatalf("%d rejections in %s wrote %d log lines; want at most %d (one per device, reason and second)", flood, elapsed.Round(time.Millisecond), lines, maxLines)
	}
	t.Logf("%d rejections in %s: %d log lines", flood, elapsed.Round(time.Millisecond), lines)
}
