package device

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// gatewayTime is the time the fake gateway answers with: far from the
// device's clock (testNow), as for a device that booted without one.
var gatewayTime = time.Unix(1_727_712_007, 0)

// timeAnswerFor builds the gateway's answer to nonce at ts, signed with
// key (the downlink key, unless a test forges one).
func timeAnswerFor(key []byte, id string, ts int64, nonce []byte) []byte {
	e := envelope.New(key, id, ts, string(envelope.NewMessageID()), envelope.TimeReplyPayload(nonce))
	return envelope.AppendJSON(nil, &e)
}

// timeNonce reads the nonce of a time request the device published on
// topic, as the gateway does.
func timeNonce(t *testing.T, topic string, raw []byte) []byte {
	t.Helper()
	if topic != TimeTopic(testID) {
		t.Fatalf("time request published on %q, want %q", topic, TimeTopic(testID))
	}
	nonce, err := envelope.ParseTimeRequest(raw)
	if err != nil {
		t.Fatalf("time request %q: %v", raw, err)
	}
	return append([]byte(nil), nonce...)
}

// TestSyncTime: the device asks, the gateway answers, and from then on the
// device signs its messages with the gateway's time plus the time elapsed
// on its own clock.
func TestSyncTime(t *testing.T) {
	local := testNow // the device's clock: wrong by years
	var published []byte
	d := newTestDevice(t, func(d *Device, topic string, raw []byte) {
		if topic == DataTopic(testID) {
			published = raw
			return
		}
		d.received(nil, fakeMessage{payload: timeAnswerFor(downKey(), testID, gatewayTime.Unix(), timeNonce(t, topic, raw))})
	})
	d.now = func() time.Time { return local }
	if got := d.Now(); !got.Equal(testNow) {
		t.Fatalf("Now before SyncTime = %v, want the device's clock %v", got, testNow)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := d.SyncTime(ctx)
	if err != nil || !got.Equal(gatewayTime) {
		t.Fatalf("SyncTime = %v, %v; want %v", got, err, gatewayTime)
	}
	local = local.Add(90 * time.Second)
	if want := gatewayTime.Add(90 * time.Second); !d.Now().Equal(want) {
		t.Fatalf("Now 90 s after SyncTime = %v, want %v", d.Now(), want)
	}
	if _, err := d.Publish(ctx, []byte(`{"t":1}`)); err != nil {
		t.Fatal(err)
	}
	e, err := envelope.Parse(published, envelope.Limits{})
	if err != nil || e.Timestamp != gatewayTime.Unix()+90 || !envelope.Verify(envelope.NewMAC([]byte(testSecret)), &e) {
		t.Fatalf("message after SyncTime: %s (%v); want a valid one timestamped %d", published, err, gatewayTime.Unix()+90)
	}
	if len(d.timeWaiters) != 0 {
		t.Errorf("%d time waiters left", len(d.timeWaiters))
	}
}

// TestSyncTimeIgnoresForgedAndCapturedAnswers is the attack on the time
// reply: while the device waits for the answer to its nonce, an attacker
// on the device's response topic plays back a genuine answer captured
// for an earlier nonce (an hour old), and forges answers to the current
// nonce: signed with the uplink key, with the time moved after signing,
// for another device. None of them may set the clock; the genuine answer
// that follows does. Without the nonce binding the captured answer would
// set the clock an hour back.
func TestSyncTimeIgnoresForgedAndCapturedAnswers(t *testing.T) {
	// The first exchange, which the attacker records.
	var captured []byte
	d := newTestDevice(t, func(d *Device, topic string, raw []byte) {
		captured = timeAnswerFor(downKey(), testID, gatewayTime.Unix()-3600, timeNonce(t, topic, raw))
		d.received(nil, fakeMessage{payload: captured})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := d.SyncTime(ctx); err != nil || got.Unix() != gatewayTime.Unix()-3600 {
		t.Fatalf("first SyncTime = %v, %v", got, err)
	}

	var seen []error
	d.onDown = func(_ *Reply, err error) { seen = append(seen, err) }
	d.client = &fakeClient{answer: func(topic string, raw []byte) {
		nonce := timeNonce(t, topic, raw)
		tampered := strings.Replace(string(timeAnswerFor(downKey(), testID, gatewayTime.Unix(), nonce)),
			`"timestamp":1727712007`, `"timestamp":1727708407`, 1)
		for _, forged := range [][]byte{
			captured, // a genuine answer, to the earlier nonce
			captured, // twice
			timeAnswerFor([]byte(testSecret), testID, gatewayTime.Unix()-7200, nonce), // signed as an uplink is
			[]byte(tampered), // time moved after signing
			timeAnswerFor(envelope.DownlinkKey([]byte("other")), testID, gatewayTime.Unix()-7200, nonce),     // another secret
			timeAnswerFor(downKey(), "sensor-2", gatewayTime.Unix()-7200, nonce),                             // another device
			downlink(downKey(), testID, envelope.RejectionPayload([]byte(envelope.NewMessageID()), "stale")), // a notice
		} {
			d.received(nil, fakeMessage{payload: forged})
		}
		d.received(nil, fakeMessage{payload: timeAnswerFor(downKey(), testID, gatewayTime.Unix(), nonce)})
	}}
	got, err := d.SyncTime(ctx)
	if err != nil || !got.Equal(gatewayTime) {
		t.Fatalf("SyncTime = %v, %v; want the genuine answer %v", got, err, gatewayTime)
	}
	if len(seen) != 8 {
		t.Fatalf("OnDownlink saw %d downlinks, want 8", len(seen))
	}
	for i, want := range []bool{true, true, false, false, false, false, true, true} {
		if (seen[i] == nil) != want {
			t.Errorf("downlink %d: verified = %v (%v), want %v", i, seen[i] == nil, seen[i], want)
		}
	}
}

// TestSyncTimeNoAnswer: a gateway that does not answer (the device is
// unknown or disabled, or it asked twice within a second) leaves SyncTime
// waiting until ctx ends, and the clock as it was.
func TestSyncTimeNoAnswer(t *testing.T) {
	d := newTestDevice(t, func(_ *Device, topic string, raw []byte) { timeNonce(t, topic, raw) })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := d.SyncTime(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SyncTime = %v, want the context's deadline", err)
	}
	if !d.Now().Equal(testNow) || len(d.timeWaiters) != 0 {
		t.Fatalf("Now = %v, %d waiters left", d.Now(), len(d.timeWaiters))
	}
	d.publishOnly = true
	if _, err := d.SyncTime(context.Background()); !errors.Is(err, ErrPublishOnly) {
		t.Fatalf("SyncTime on a publish-only device = %v", err)
	}
}
