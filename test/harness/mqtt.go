package harness

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/pkg/pki"
)

// ConnectTimeout bounds NewDeviceClient and Connect.
const ConnectTimeout = 5 * time.Second

// TLSConfig returns a client TLS configuration for identity that trusts
// the CA in certsDir and presents identity's certificate: the gateway's
// (gateway.crt) when identity is pki.GatewayIdentity ("gateway"), else the
// device certificate devices/<identity>.crt.
func TLSConfig(t testing.TB, certsDir, identity string) *tls.Config {
	t.Helper()
	cfg, err := tlsConfig(certsDir, identity)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return cfg
}

func tlsConfig(certsDir, identity string) (*tls.Config, error) {
	files := pki.Paths(certsDir)
	crt, key := files.GatewayCert, files.GatewayKey
	if identity != pki.GatewayIdentity {
		crt, key = pki.DeviceCert(certsDir, identity)
	}
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return nil, fmt.Errorf("load %s certificate: %w", identity, err)
	}
	caPEM, err := os.ReadFile(files.CACert)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("load CA: no certificate in %s", files.CACert)
	}
	return &tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// NewDeviceClient returns a Paho client connected to b over mutual TLS as
// id (a device id, or "gateway" for the gateway's certificate), with
// client id id and a clean session. It does not reconnect by itself. It
// fails the test if the connection is refused, and disconnects when the
// test ends.
func NewDeviceClient(t testing.TB, b *Broker, certsDir, id string) mqtt.Client {
	t.Helper()
	c, err := Connect(t, b.Addr, TLSConfig(t, certsDir, id), id)
	if err != nil {
		t.Fatalf("harness: connect %s to %s: %v", id, b.Addr, err)
	}
	return c
}

// Connect connects a Paho client to addr with cfg (nil for no client
// certificate and no trusted CA beyond the system's) and a clean session,
// and returns the connection error instead of failing the test, for tests
// that expect a refusal. A connected client is disconnected when the test
// ends.
func Connect(t testing.TB, addr string, cfg *tls.Config, clientID string) (mqtt.Client, error) {
	t.Helper()
	opts := mqtt.NewClientOptions().
		AddBroker(addr).
		SetClientID(clientID).
		SetTLSConfig(cfg).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(ConnectTimeout).
		SetWriteTimeout(ConnectTimeout)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(ConnectTimeout + time.Second) {
		c.Disconnect(0)
		return nil, fmt.Errorf("connect: no CONNACK after %v", ConnectTimeout)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}
