package test

import (
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/test/harness"
)

// The two listeners of mosquitto.conf (issue 9, finding 1): on the device
// listener a client's id is its certificate's CN, whatever it asks for;
// on the gateway listener ids are kept, so the gateway's two connections
// coexist, and the ACL still binds a device certificate to its own topics.

// gatewayOn connects the gateway's certificate to the gateway listener
// with clientID.
func gatewayOn(t *testing.T, b *harness.Broker, certs, clientID string) mqtt.Client {
	t.Helper()
	c, err := harness.Connect(t, b.GatewayAddr, harness.TLSConfig(t, certs, "gateway"), clientID)
	if err != nil {
		t.Fatalf("gateway %q on the gateway listener: %v", clientID, err)
	}
	return c
}

// stillConnected checks, after a message round trip through the broker
// (so the broker has handled every earlier CONNECT), that c was not kicked.
func stillConnected(t *testing.T, c mqtt.Client, what string) {
	t.Helper()
	if !c.IsConnectionOpen() {
		t.Errorf("%s was disconnected: its client id was taken", what)
	}
}

// TestBrokerDeviceClientIDIsItsCN: a device asking for another device's
// client id, or for the gateway's, is given its own CN: nobody is kicked.
func TestBrokerDeviceClientIDIsItsCN(t *testing.T) {
	certs, b := brokerSetup(t)
	gw := gatewayOn(t, b, certs, fixtureClientID)
	gwData := mustSubscribe(t, gw, "device/+/data")
	d2 := harness.NewDeviceClient(t, b, certs, "d2")

	for _, squatID := range []string{"d2", fixtureClientID, fixtureClientID + "-replies"} {
		t.Run(squatID, func(t *testing.T) {
			d1, err := harness.Connect(t, b.Addr, harness.TLSConfig(t, certs, "d1"), squatID)
			if err != nil {
				t.Fatalf("d1 asking for %q: %v", squatID, err)
			}
			publish(t, d2, "device/d2/data", "marker "+squatID)
			expect(t, gwData, "device/d2/data", "marker "+squatID)
			stillConnected(t, d2, "d2")
			stillConnected(t, gw, "the gateway")
			// d1 is connected as "d1": its own topic still works.
			publish(t, d1, "device/d1/data", "from d1")
			expect(t, gwData, "device/d1/data", "from d1")
			d1.Disconnect(50)
		})
	}
}

// TestBrokerGatewayListenerKeepsClientIDs: the gateway's two connections,
// <client_id> and <client_id>-replies, keep their ids on the gateway
// listener and do not kick each other.
func TestBrokerGatewayListenerKeepsClientIDs(t *testing.T) {
	certs, b := brokerSetup(t)
	session := gatewayOn(t, b, certs, fixtureClientID)
	replies := gatewayOn(t, b, certs, fixtureClientID+"-replies")
	data := mustSubscribe(t, session, "device/+/data")
	d1 := harness.NewDeviceClient(t, b, certs, "d1")
	d1Replies := mustSubscribe(t, d1, "device/d1/response")
	publish(t, d1, "device/d1/data", "up")
	expect(t, data, "device/d1/data", "up")
	publish(t, replies, "device/d1/response", "down")
	expect(t, d1Replies, "device/d1/response", "down")
	stillConnected(t, session, "the session connection")
	stillConnected(t, replies, "the reply connection")
}

// TestBrokerGatewayListenerDeviceCertificate: what the config enforces for
// a device certificate that reaches the gateway listener (in production it
// cannot: the listener is on loopback, or unpublished in compose). The
// ACL, keyed on the CN, still applies: it reads no other device's data and
// cannot publish as another device or as the gateway. It keeps the client
// id it asks for there, which is why the listener must stay unreachable.
func TestBrokerGatewayListenerDeviceCertificate(t *testing.T) {
	certs, b := brokerSetup(t)
	gw := gatewayOn(t, b, certs, fixtureClientID)
	gwData := mustSubscribe(t, gw, "device/+/data")
	d2 := harness.NewDeviceClient(t, b, certs, "d2")
	d2Replies := mustSubscribe(t, d2, "device/d2/response")
	d1, err := harness.Connect(t, b.GatewayAddr, harness.TLSConfig(t, certs, "d1"), "d1-on-gateway-listener")
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	msgs := make(chan mqtt.Message, 100)
	for _, filter := range []string{"#", "device/+/data", "$share/g/device/+/data"} {
		if tok := d1.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) { msgs <- m }); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", filter, tok.Error())
		}
	}
	publish(t, d2, "device/d2/data", "secret")
	expect(t, gwData, "device/d2/data", "secret")
	expectNone(t, msgs, "device certificate on the gateway listener")

	publish(t, d1, "device/d2/data", "forged")
	publish(t, d1, "device/d2/response", "forged reply")
	publish(t, d2, "device/d2/data", "marker")
	expect(t, gwData, "device/d2/data", "marker")
	publish(t, gw, "device/d2/response", "real reply")
	expect(t, d2Replies, "device/d2/response", "real reply")
	expectNone(t, gwData, "forged data from the gateway listener")
	expectNone(t, d2Replies, "forged reply from the gateway listener")
}
