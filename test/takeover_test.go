package test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/test/harness"
)

// The session takeover (issue 9, finding 1): a device connects with the
// gateway's client id. Mosquitto keys sessions by client id, so without
// use_username_as_clientid on the device listener the device inherits the
// gateway's persistent session (clean session off) or discards it (clean
// session on); the read ACL then drops the gateway's messages.

// squatter is a device connection that asked for another client id.
type squatter struct {
	c   mqtt.Client
	got atomic.Int64 // messages delivered to it, on any topic
}

// squat connects device id to addr asking for clientID, subscribes to
// everything, and returns once connected. It never reconnects.
func squat(t *testing.T, f *fixture, addr, id, clientID string, clean bool) *squatter {
	t.Helper()
	s := &squatter{}
	count := func(mqtt.Client, mqtt.Message) { s.got.Add(1) }
	opts := mqtt.NewClientOptions().AddBroker(addr).SetClientID(clientID).
		SetTLSConfig(harness.TLSConfig(t, f.certs, id)).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(3 * time.Second).
		SetDefaultPublishHandler(count) // messages of an inherited session
	s.c = mqtt.NewClient(opts)
	if tok := s.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("squatter %s as %q: connect: %v", id, clientID, tok.Error())
	}
	for _, filter := range []string{"#", "device/+/data"} {
		if tok := s.c.Subscribe(filter, 1, count); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("squatter subscribe %s: %v", filter, tok.Error())
		}
	}
	return s
}

// TestSessionTakeoverBlocked: during a 2,000-message signed stream, a
// device connects with the gateway's client id, first with clean session
// off (to inherit the gateway's queued session), then on (to discard it).
// It receives nothing, and every message reaches the backend exactly once.
func TestSessionTakeoverBlocked(t *testing.T) {
	f := newFixture(t, append([]string{"mallory"}, faultDevices...)...)
	g := f.startGateway(gatewayOpts{})
	s := newStream(t, f)
	var mu sync.Mutex
	var squatters []*squatter
	attack := func(clean bool) func() {
		return func() {
			sq := squat(t, f, f.broker.Addr, "mallory", fixtureClientID, clean)
			mu.Lock()
			squatters = append(squatters, sq)
			mu.Unlock()
			time.Sleep(time.Second) // hold the session while the stream runs
			sq.c.Disconnect(100)
		}
	}
	s.run(faultMessages, 5*time.Millisecond, map[int]func(){
		faultMessages / 4: attack(false),
		faultMessages / 2: attack(true),
	})
	r := s.settle("session takeover", 60*time.Second)
	s.noDuplicates(r)
	for i, sq := range squatters {
		if n := sq.got.Load(); n != 0 {
			t.Errorf("squatter %d received %d messages, want none", i, n)
		}
	}
	if len(squatters) != 2 {
		t.Fatalf("%d takeovers attempted, want 2", len(squatters))
	}
	g.waitReady(10 * time.Second)
}
