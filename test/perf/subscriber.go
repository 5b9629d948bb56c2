package perf

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/test/harness"
)

// Subscriber is the consumer of the broker-limit runs: a Paho client with
// the gateway's certificate, subscribed to device/+/data at QoS 1, that
// does nothing with a message but hand it to the current Recorder (count
// and timestamp) and let Paho acknowledge it. It uses the same connection
// layer as the gateway (mqttio.OpenTLS, which batches PUBACKs into few TLS
// records), so the two consumers differ only in what they do per message.
type Subscriber struct {
	rig    *Rig
	c      mqtt.Client
	rec    atomic.Pointer[Recorder]
	strays atomic.Int64
}

// dataTopic is what the gateway subscribes to.
const dataTopic = "device/+/data"

// StartSubscriber connects and subscribes a Subscriber to r's broker with a
// clean session; it disconnects when the test ends.
func (r *Rig) StartSubscriber(t testing.TB) *Subscriber {
	t.Helper()
	s := &Subscriber{rig: r}
	if err := s.connect(t); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Reconnect replaces the subscriber's connection with a new one (a new
// client id and clean session): the broker's per-client counters start
// again from zero. See RunSpec.
func (s *Subscriber) Reconnect(t testing.TB) error {
	s.Close()
	return s.connect(t)
}

func (s *Subscriber) connect(t testing.TB) error {
	cfg := harness.TLSConfig(t, s.rig.Certs, pki.GatewayIdentity)
	var id [4]byte
	rand.Read(id[:]) //nolint:errcheck // never fails
	opts := mqtt.NewClientOptions().
		AddBroker(s.rig.Broker.GatewayAddr).
		SetClientID("bench:subscriber-" + hex.EncodeToString(id[:])).
		SetTLSConfig(cfg).
		SetCustomOpenConnectionFn(mqttio.OpenTLS(cfg, harness.ConnectTimeout)).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetKeepAlive(30 * time.Second).
		SetAutoReconnect(false).
		SetConnectTimeout(harness.ConnectTimeout)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(harness.ConnectTimeout+time.Second) || tok.Error() != nil {
		return fmt.Errorf("subscriber: connect: %w", tok.Error())
	}
	tok := c.Subscribe(dataTopic, 1, s.handle)
	if !tok.WaitTimeout(harness.ConnectTimeout) || tok.Error() != nil {
		c.Disconnect(0)
		return fmt.Errorf("subscriber: subscribe %s: %w", dataTopic, tok.Error())
	}
	s.c = c
	return nil
}

// handle runs on Paho's router: it only records.
func (s *Subscriber) handle(_ mqtt.Client, m mqtt.Message) {
	at := time.Now().UnixNano()
	rec := s.rec.Load()
	if rec == nil {
		s.strays.Add(1)
		return
	}
	dev := strings.TrimSuffix(strings.TrimPrefix(m.Topic(), "device/"), "/data")
	rec.Record(dev, m.Payload(), at)
}

// Expect makes rec the recorder of the messages to come (nil: none).
func (s *Subscriber) Expect(rec *Recorder) { s.rec.Store(rec) }

// Strays returns the number of messages that came while no recorder was set.
func (s *Subscriber) Strays() int64 { return s.strays.Load() }

// Close disconnects the subscriber, so the broker stops delivering to it.
func (s *Subscriber) Close() {
	if s.c != nil {
		s.c.Disconnect(100)
		s.c = nil
	}
}
