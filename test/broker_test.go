package test

import (
	"crypto/tls"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/test/harness"
)

// These tests run the project's mosquitto.conf and acl in a real
// Mosquitto, with no gateway: they check who may connect and which topics
// each identity may use.

const (
	// wait bounds every wait for something that should happen.
	wait = 3 * time.Second
	// quiet is how long a check that something does not happen waits after
	// a later message on the same path has arrived.
	quiet = 300 * time.Millisecond
	// subFailure is the SUBACK return code of a refused subscription.
	subFailure = 0x80
	// subGranted is the SUBACK return code of a QoS 1 subscription.
	subGranted = 0x01
)

// brokerSetup starts a broker with devices d1 and d2 and returns the PKI
// directory and the broker.
func brokerSetup(t *testing.T) (string, *harness.Broker) {
	t.Helper()
	certs := harness.PKI(t)
	harness.IssueDevice(t, certs, "d1")
	harness.IssueDevice(t, certs, "d2")
	return certs, harness.StartMosquitto(t, certs)
}

// subscribe subscribes c to filter at QoS 1 and returns the SUBACK code
// and a channel of the messages that arrive.
func subscribe(t *testing.T, c mqtt.Client, filter string) (byte, <-chan mqtt.Message) {
	t.Helper()
	msgs := make(chan mqtt.Message, 100)
	tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case msgs <- m:
		default:
			t.Errorf("subscription %s: message buffer full", filter)
		}
	})
	if !tok.WaitTimeout(wait) {
		t.Fatalf("subscribe %s: no SUBACK after %v", filter, wait)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	// Paho keys the result by the filter without any "$share/<group>/".
	result := tok.(*mqtt.SubscribeToken).Result()
	if len(result) != 1 {
		t.Fatalf("subscribe %s: SUBACK results %v, want one", filter, result)
	}
	for _, code := range result {
		return code, msgs
	}
	panic("unreachable")
}

// mustSubscribe subscribes and fails the test unless the broker grants it.
func mustSubscribe(t *testing.T, c mqtt.Client, filter string) <-chan mqtt.Message {
	t.Helper()
	code, msgs := subscribe(t, c, filter)
	if code == subFailure {
		t.Fatalf("subscribe %s: refused (SUBACK 0x80)", filter)
	}
	return msgs
}

// publish publishes at QoS 1 and waits for the PUBACK. The broker acks a
// publish that the ACL denies too; it just does not deliver it.
func publish(t *testing.T, c mqtt.Client, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(wait) {
		t.Fatalf("publish %s: no PUBACK after %v", topic, wait)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// expect waits for the next message and checks its topic and payload.
func expect(t *testing.T, msgs <-chan mqtt.Message, topic, payload string) {
	t.Helper()
	select {
	case m := <-msgs:
		if m.Topic() != topic || string(m.Payload()) != payload {
			t.Fatalf("got %q on %s, want %q on %s", m.Payload(), m.Topic(), payload, topic)
		}
	case <-time.After(wait):
		t.Fatalf("no message on %s after %v", topic, wait)
	}
}

// expectNone checks that no message arrives within quiet.
func expectNone(t *testing.T, msgs <-chan mqtt.Message, what string) {
	t.Helper()
	select {
	case m := <-msgs:
		t.Fatalf("%s: got %q on %s, want nothing", what, m.Payload(), m.Topic())
	case <-time.After(quiet):
	}
}

func TestBrokerDeviceToGatewayAndBack(t *testing.T) {
	certs, b := brokerSetup(t)
	gw := harness.NewDeviceClient(t, b, certs, "gateway")
	d1 := harness.NewDeviceClient(t, b, certs, "d1")

	tests := []struct {
		name   string
		filter string
		topic  string
	}{
		{"plain subscription", "device/+/data", "device/d1/data"},
		{"shared subscription", "$share/gateways/device/+/data", "device/d1/data"},
		{"time request, plain subscription", "device/+/time", "device/d1/time"},
		{"time request, shared subscription", "$share/gateways/device/+/time", "device/d1/time"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := mustSubscribe(t, gw, tc.filter)
			defer func() { gw.Unsubscribe(tc.filter).WaitTimeout(wait) }()
			publish(t, d1, tc.topic, "hello "+tc.name)
			expect(t, data, tc.topic, "hello "+tc.name)
		})
	}

	t.Run("reply", func(t *testing.T) {
		replies := mustSubscribe(t, d1, "device/d1/response")
		publish(t, gw, "device/d1/response", "ok")
		expect(t, replies, "device/d1/response", "ok")
	})
}

func TestBrokerACLDeniesOtherDevicesTopics(t *testing.T) {
	certs, b := brokerSetup(t)
	gw := harness.NewDeviceClient(t, b, certs, "gateway")
	d1 := harness.NewDeviceClient(t, b, certs, "d1")
	d2 := harness.NewDeviceClient(t, b, certs, "d2")
	gwData := mustSubscribe(t, gw, "device/+/data")
	gwTime := mustSubscribe(t, gw, "device/+/time")
	d2Replies := mustSubscribe(t, d2, "device/d2/response")

	// Each forbidden publish is followed by an allowed one from the same
	// client to the same subscriber. The broker handles a connection's
	// packets in order, so once the allowed message has arrived the
	// forbidden one would already have.
	tests := []struct {
		name      string
		topic     string
		msgs      <-chan mqtt.Message
		nextTopic string
		next      mqtt.Client
	}{
		{"publish as another device", "device/d2/data", gwData, "device/d1/data", d1},
		{"forge a reply to another device", "device/d2/response", d2Replies, "device/d2/response", gw},
		{"publish on a topic outside the scheme", "device/d1/other", gwData, "device/d1/data", d1},
		{"ask for the time as another device", "device/d2/time", gwTime, "device/d1/time", d1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			publish(t, d1, tc.topic, "forged")
			publish(t, tc.next, tc.nextTopic, "marker")
			expect(t, tc.msgs, tc.nextTopic, "marker")
			expectNone(t, tc.msgs, tc.name)
		})
	}
}

// TestBrokerACLDeniesDeviceSubscriptions checks that a device cannot read
// other devices' topics by subscribing. Mosquitto 2.0 does not check the
// acl_file when a client subscribes (it grants any subscription, so the
// SUBACK proves nothing); it checks read access on every message it is
// about to send. So the test checks delivery, with the gateway receiving
// the same messages as a marker.
func TestBrokerACLDeniesDeviceSubscriptions(t *testing.T) {
	certs, b := brokerSetup(t)
	gw := harness.NewDeviceClient(t, b, certs, "gateway")
	d1 := harness.NewDeviceClient(t, b, certs, "d1")
	d2 := harness.NewDeviceClient(t, b, certs, "d2")
	gwData := mustSubscribe(t, gw, "device/+/data")
	gwTime := mustSubscribe(t, gw, "device/+/time")

	tests := []struct {
		name, filter string
	}{
		{"all devices' data", "device/+/data"},
		{"another device's data", "device/d2/data"},
		{"another device's replies", "device/d2/response"},
		{"all replies", "device/+/response"},
		{"shared data", "$share/g/device/+/data"},
		{"all time requests", "device/+/time"},
		{"another device's time requests", "device/d2/time"},
		{"everything", "#"},
		{"broker status", "$SYS/#"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, msgs := subscribe(t, d1, tc.filter)
			if code != subFailure && code != subGranted {
				t.Errorf("subscribe %s: SUBACK %#x, want %#x or %#x", tc.filter, code, subFailure, subGranted)
			}
			publish(t, d2, "device/d2/data", "secret")
			publish(t, d2, "device/d2/time", "secret time request")
			publish(t, gw, "device/d2/response", "secret reply")
			expect(t, gwData, "device/d2/data", "secret")
			expect(t, gwTime, "device/d2/time", "secret time request")
			expectNone(t, msgs, "subscription "+tc.filter)
		})
	}
}

func TestBrokerRefusesClientsWithoutOurCertificate(t *testing.T) {
	certs, b := brokerSetup(t)
	foreign := harness.PKI(t)
	harness.IssueDevice(t, foreign, "d1")
	trustOurCA := harness.TLSConfig(t, certs, "d1").RootCAs

	withForeignCert := func(identity string) *tls.Config {
		cfg := harness.TLSConfig(t, foreign, identity)
		cfg.RootCAs = trustOurCA
		return cfg
	}
	tests := []struct {
		name string
		cfg  *tls.Config
	}{
		{"no certificate", &tls.Config{RootCAs: trustOurCA, MinVersion: tls.VersionTLS12}},
		{"device certificate from another CA", withForeignCert("d1")},
		{"gateway certificate from another CA", withForeignCert("gateway")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := harness.Connect(t, b.Addr, tc.cfg, "intruder")
			if err == nil {
				c.Disconnect(0)
				t.Fatalf("connected, want the TLS handshake refused")
			}
			t.Logf("refused as expected: %v", err)
		})
	}

	// The broker is still up and serving its own clients.
	harness.NewDeviceClient(t, b, certs, "d1")
}
