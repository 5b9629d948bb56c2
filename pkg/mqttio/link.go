package mqttio

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/internal/tick"
)

// The gateway's two broker connections, as linkState counts them.
const (
	linkSession = iota // the persistent session that receives uplinks
	linkReplies        // the connection that publishes replies
	linkCount
)

// flapLimit is the number of drops in a row, each soon after its
// connection was made, that make the link flapping.
const flapLimit = 3

// ErrBrokerLost is returned by Client.Watch when the gateway has been
// without its broker connections for mqtt.max_disconnected.
var ErrBrokerLost = errors.New("no broker connection")

// linkState follows the two connections: when each came up, when the
// gateway last had both, and whether they keep dropping right after
// connecting ("flapping"). That happens when mqtt.broker names the
// device listener, where the broker gives every client its certificate's
// CN as client id, so the gateway's two connections take each other's
// place; or when another client uses mqtt.client_id. Its methods are safe
// for concurrent use.
type linkState struct {
	now func() time.Time
	// stable is how long a connection must have been up for its drop to
	// be a plain loss rather than a flap, and how long both must stay up
	// for flapping to end.
	stable time.Duration

	mu        sync.Mutex
	upSince   [linkCount]time.Time // zero: that connection is down
	downSince time.Time            // zero: both are up
	short     int                  // drops in a row within stable of connecting
	isFlap    bool
}

func newLinkState(now func() time.Time, stable time.Duration) *linkState {
	return &linkState{now: now, stable: stable, downSince: now()}
}

// up records that connection conn is connected.
func (s *linkState) up(conn int) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upSince[conn] = now
	if !s.upSince[linkSession].IsZero() && !s.upSince[linkReplies].IsZero() {
		s.downSince = time.Time{}
	}
}

// down records that connection conn was lost. A drop counts toward
// flapping when conn had been up for less than the stable time while the
// other connection was up (its client id taken over); a drop after a
// long connection starts the count again. It returns true when this drop
// makes the link flapping, once per episode, for the caller to say what
// that usually means.
func (s *linkState) down(conn int) (startedFlapping bool) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	since := s.upSince[conn]
	s.upSince[conn] = time.Time{}
	if s.downSince.IsZero() {
		s.downSince = now
	}
	if since.IsZero() {
		return false
	}
	if now.Sub(since) >= s.stable {
		s.short, s.isFlap = 0, false
		return false
	}
	if s.upSince[linkCount-1-conn].IsZero() {
		// The other connection is down too: the broker went away (both
		// drop together), which is a loss, not a takeover.
		return false
	}
	s.short++
	if s.short >= flapLimit && !s.isFlap {
		s.isFlap = true
		return true
	}
	return false
}

// flapping reports whether the connections keep dropping right after
// connecting: from the flapLimit-th such drop until both connections
// have stayed up for the stable time.
func (s *linkState) flapping(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.isFlap {
		return false
	}
	for _, t := range s.upSince {
		if t.IsZero() || now.Sub(t) < s.stable {
			return true
		}
	}
	s.short, s.isFlap = 0, false
	return false
}

// downFor returns how long the gateway has been without both connections
// (since its start if it never had them), 0 while both are up.
func (s *linkState) downFor(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.downSince.IsZero() {
		return 0
	}
	return now.Sub(s.downSince)
}

// flapWarning is logged once when the link starts flapping.
func (c *Client) flapWarning() {
	c.log.Error("broker connection keeps dropping right after connecting: mqtt.broker most likely names the devices' listener "+
		"(8883, where every client's id becomes its certificate's CN, so the gateway's two connections knock each other off) "+
		"instead of the gateway listener (8884, mosquitto/mosquitto.conf), or another client is using mqtt.client_id; "+
		"/readyz answers 503 until both connections stay up",
		zap.String("broker", c.cfg.Broker), zap.String("client_id", c.cfg.ClientID), zap.Int("drops_in_a_row", flapLimit))
}

// Flapping reports whether the broker connections keep dropping right
// after connecting (the device listener, or a client id taken): from the
// third such drop in a row until both connections have stayed up for
// twice mqtt.max_reconnect_interval (10 s at least). Connected is false
// meanwhile.
func (c *Client) Flapping() bool { return c.links.flapping(c.now()) }

// Watch blocks until ctx ends (returning nil) or the gateway has been
// without both broker connections for mqtt.max_disconnected, counted from
// the start when it never had them; then it logs why and returns an error
// wrapping ErrBrokerLost, so that the process can exit non-zero and its
// supervisor's restart policy recover it (say, a container left in the
// dead network namespace of a restarted broker container). With
// max_disconnected 0 it only waits for ctx.
func (c *Client) Watch(ctx context.Context) error {
	limit := c.cfg.MaxDisconnected
	if limit <= 0 {
		<-ctx.Done()
		return nil
	}
	t, stop := tick.Aligned(max(min(time.Second, limit/4), time.Millisecond))
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if d := c.links.downFor(c.now()); d >= limit {
			c.log.Error("no broker connection for mqtt.max_disconnected; exiting so that the supervisor restarts the gateway",
				zap.String("broker", c.cfg.Broker), zap.Duration("max_disconnected", limit), zap.Duration("disconnected_for", d.Round(time.Second)))
			return fmt.Errorf("%w for %s (mqtt.max_disconnected %s; broker %s)", ErrBrokerLost, d.Round(time.Second), limit, c.cfg.Broker)
		}
	}
}
