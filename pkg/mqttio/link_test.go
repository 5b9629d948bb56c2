package mqttio

import (
	"strings"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time            { return c.t }
func (c *fakeClock) add(d time.Duration)       { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock                 { return &fakeClock{t: time.Unix(1700000000, 0)} }
func newTestLinks(c *fakeClock) *linkState     { return newLinkState(c.now, 10*time.Second) }
func (s *linkState) flappingNow() bool         { return s.flapping(s.now()) }
func (s *linkState) downForNow() time.Duration { return s.downFor(s.now()) }

// TestLinkFlapping (issue 16, item 8): the gateway's two connections
// knock each other off right after connecting, as on the broker's device
// listener (both get the certificate's CN as client id) or when another
// client holds mqtt.client_id. After flapLimit such drops in a row the
// link is flapping, reported once; it stays so, even while both
// connections happen to be up, until both have stayed up for the stable
// time. A drop after a long connection is a plain loss.
func TestLinkFlapping(t *testing.T) {
	c := newFakeClock()
	s := newTestLinks(c)
	s.up(linkReplies)
	s.up(linkSession)
	if s.flappingNow() {
		t.Fatal("flapping before any drop")
	}
	reports := 0
	for i := range 2 * flapLimit {
		c.add(time.Second)
		conn := linkReplies
		if i%2 == 1 {
			conn = linkSession
		}
		if s.down(conn) {
			reports++
		}
		c.add(time.Second)
		s.up(conn)
		if want := i+1 >= flapLimit; s.flappingNow() != want {
			t.Fatalf("after %d short drops: flapping %v, want %v", i+1, !want, want)
		}
	}
	if reports != 1 {
		t.Errorf("flapping reported %d times, want once", reports)
	}
	// Both up, but only for a moment: still flapping.
	c.add(5 * time.Second)
	if !s.flappingNow() {
		t.Fatal("flapping cleared after 5 s of both connections up, want it kept until 10 s")
	}
	c.add(5 * time.Second)
	if s.flappingNow() {
		t.Fatal("still flapping after both connections stayed up 10 s")
	}
	// A drop after a long connection is a loss, not flapping.
	c.add(time.Minute)
	if s.down(linkSession) || s.flappingNow() {
		t.Fatal("one drop after a long connection counted as flapping")
	}
}

// TestLinkDownFor: how long the gateway has been without both broker
// connections, from its start (never connected) or from the first drop;
// zero while both are up.
func TestLinkDownFor(t *testing.T) {
	c := newFakeClock()
	s := newTestLinks(c)
	c.add(3 * time.Second)
	if got := s.downForNow(); got != 3*time.Second {
		t.Fatalf("never connected for 3 s: down for %v", got)
	}
	s.up(linkReplies)
	c.add(time.Second)
	if got := s.downForNow(); got != 4*time.Second {
		t.Fatalf("only the reply connection up: down for %v, want 4s", got)
	}
	s.up(linkSession)
	if got := s.downForNow(); got != 0 {
		t.Fatalf("both up: down for %v", got)
	}
	c.add(time.Hour)
	s.down(linkSession)
	c.add(2 * time.Second)
	s.down(linkReplies)
	c.add(time.Second)
	if got := s.downForNow(); got != 3*time.Second {
		t.Fatalf("down for %v, want 3s (since the first drop)", got)
	}
}

// TestBrokerHintNamesTheGatewayListener (issue 16, item 8): the hint for
// mqtt.broker names the gateway listener, 8884, not the devices' 8883.
func TestBrokerHintNamesTheGatewayListener(t *testing.T) {
	c := testConfig(t)
	for _, broker := range []string{"", "ssl://host"} {
		c.Broker = broker
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "8884") || strings.Contains(err.Error(), "ssl://host:8883") {
			t.Errorf("broker %q: %v, want a hint naming the gateway listener 8884", broker, err)
		}
	}
}

// TestMaxDisconnected: mqtt.max_disconnected is 0 (never exit) or at
// least mqtt.max_reconnect_interval, so that one reconnect backoff never
// stops the gateway.
func TestMaxDisconnected(t *testing.T) {
	c := testConfig(t)
	if c.MaxDisconnected <= 0 {
		t.Fatalf("default mqtt.max_disconnected %v, want minutes", c.MaxDisconnected)
	}
	for _, tc := range []struct {
		d  time.Duration
		ok bool
	}{{0, true}, {c.MaxReconnectInterval, true}, {10 * time.Minute, true}, {-time.Second, false}, {time.Second, false}} {
		c := c
		c.MaxDisconnected = tc.d
		if err := c.Validate(); (err == nil) != tc.ok || err != nil && !strings.Contains(err.Error(), "mqtt.max_disconnected") {
			t.Errorf("max_disconnected %v: %v, want ok=%v", tc.d, err, tc.ok)
		}
	}
}

// TestLinkBrokerRestartIsNotATakeover: when the broker goes away both
// connections drop together; that counts once, so one broker restart
// soon after connecting is not flapping.
func TestLinkBrokerRestartIsNotATakeover(t *testing.T) {
	c := newFakeClock()
	s := newTestLinks(c)
	for range flapLimit - 1 {
		s.up(linkReplies)
		s.up(linkSession)
		c.add(time.Second)
		s.down(linkSession)
		s.down(linkReplies)
		c.add(time.Second)
	}
	s.up(linkReplies)
	s.up(linkSession)
	if s.flappingNow() {
		t.Fatalf("%d broker restarts (both connections dropping together) counted as flapping", flapLimit-1)
	}
}
