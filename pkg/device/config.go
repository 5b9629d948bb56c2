package device

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// Defaults for Config.
const (
	// DefaultConnectTimeout bounds the TLS handshake, CONNECT and SUBSCRIBE.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultKeepAlive is the MQTT keep-alive interval.
	DefaultKeepAlive = 30 * time.Second
	// DefaultMaxReconnectInterval is the longest pause between reconnection
	// attempts.
	DefaultMaxReconnectInterval = 30 * time.Second
)

// Config configures Dial. DeviceID, Secret, Broker and the TLS material
// (CAFile with CertFile and KeyFile, or TLS) are required; everything else
// has a default.
type Config struct {
	// Broker is the broker's device listener, as ssl://host:port
	// (tls:// and mqtts:// mean the same). The project's broker serves
	// devices on 8883: ssl://broker.example.com:8883. The host must be a
	// name or address in the broker's certificate (iotgw pki init names
	// localhost, 127.0.0.1, ::1 and its --host values).
	Broker string
	// CAFile is the PEM file of the CA that signed the broker's
	// certificate (ca.crt from iotgw pki init).
	CAFile string
	// CertFile and KeyFile are the device's PEM certificate (its CN is
	// the device id) and ECDSA P-256 private key (devices/<id>.crt and
	// .key from iotgw pki issue).
	CertFile, KeyFile string
	// TLS, when set, is used instead of CAFile, CertFile and KeyFile (give
	// one or the other, not both). It must trust the broker's CA and
	// carry the device's certificate; ServerName is set from Broker's host
	// when empty. Dial does not modify it.
	TLS *tls.Config
	// DeviceID is the device id, 1-64 characters of [A-Za-z0-9_.-]. It is
	// the certificate's CN, the MQTT client id (the broker forces the CN
	// as client id on the device listener anyway) and the device_id of
	// every message.
	DeviceID string
	// Secret is the device's shared secret, exactly as "iotgw device add"
	// printed it (its bytes are the HMAC key). It is never logged and
	// never appears in an error.
	Secret []byte
	// ConnectTimeout bounds each connection attempt (TLS, CONNECT,
	// SUBSCRIBE). Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// KeepAlive is the MQTT keep-alive. Zero means DefaultKeepAlive.
	KeepAlive time.Duration
	// NoReconnect turns off Paho's automatic reconnection after a lost
	// connection (on by default; each reconnection subscribes to the
	// response topic again).
	NoReconnect bool
	// MaxReconnectInterval is the longest pause between reconnection
	// attempts. Zero means DefaultMaxReconnectInterval.
	MaxReconnectInterval time.Duration
	// Now is the clock that timestamps messages. The gateway accepts
	// timestamps within its freshness window (±5 minutes by default), so
	// the device's clock must be set: by NTP, or, for a device without
	// one, by Device.SyncTime, after which messages are timestamped with
	// the gateway's time plus the time elapsed on Now since. Nil means
	// time.Now.
	Now func() time.Time
	// Counter, when set, makes the device a counter-mode device
	// (registered with "iotgw device add --freshness counter";
	// docs/PROTOCOL.md, section 2a): Publish and Request sign the next
	// counter instead of the time, and Now is not used for signing.
	Counter *Counter
	// PublishOnly skips the subscription to the response topic: the
	// device only publishes, Request fails with ErrPublishOnly and
	// OnDownlink is never called (for load generators that do not read
	// replies; the broker then delivers them to no one).
	PublishOnly bool
	// OnDownlink, when set, is called for every message received on the
	// response topic, verified or not, before a waiting Request gets it:
	// err is nil for a verified downlink, else wraps ErrBadReplySignature
	// or ErrMalformedReply (r then holds what could be read, and Raw).
	// It runs on Paho's goroutines, possibly concurrently, and must not
	// block.
	OnDownlink func(r *Reply, err error)
	// OpenConnection, when set, replaces Paho's own TLS dial (for example
	// to batch writes under load). It must use the TLS configuration it is
	// given in the options.
	OpenConnection mqtt.OpenConnectionFunc
}

// ErrConfig is wrapped by every error of Config.Validate.
var ErrConfig = errors.New("device: invalid config")

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	switch {
	case !envelope.ValidDeviceID(c.DeviceID):
		return bad("device id %q is not 1-64 characters of [A-Za-z0-9_.-]", c.DeviceID)
	case len(c.Secret) == 0:
		return bad("no secret")
	case brokerURL(c.Broker) == "":
		return bad("broker %q is not a TLS URL like ssl://127.0.0.1:8883", c.Broker)
	case c.TLS != nil && (c.CAFile != "" || c.CertFile != "" || c.KeyFile != ""):
		return bad("give TLS or CAFile/CertFile/KeyFile, not both")
	case c.TLS == nil && (c.CAFile == "" || c.CertFile == "" || c.KeyFile == ""):
		return bad("CAFile, CertFile and KeyFile are required (or TLS)")
	case c.PublishOnly && c.OnDownlink != nil:
		return bad("OnDownlink is never called with PublishOnly")
	case c.ConnectTimeout < 0 || c.KeepAlive < 0 || c.MaxReconnectInterval < 0:
		return bad("negative timeout")
	}
	return nil
}

// brokerURL returns u in the scheme Paho understands, or "" if it is not
// a TLS URL.
func brokerURL(u string) string {
	for _, p := range []string{"ssl://", "tls://", "mqtts://"} {
		if s, ok := strings.CutPrefix(u, p); ok && s != "" {
			return "ssl://" + s
		}
	}
	return ""
}

// tlsConfig returns the client TLS configuration of c. Its certificate's
// CN must be the device id: the broker takes the CN as the device's
// identity, so any other id would publish where the ACL drops everything.
func (c *Config) tlsConfig() (*tls.Config, error) {
	if c.TLS != nil {
		cfg := c.TLS.Clone()
		if len(cfg.Certificates) > 0 {
			if err := c.checkCN(cfg.Certificates[0]); err != nil {
				return nil, err
			}
		}
		return cfg, nil
	}
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("load CA: no PEM certificate in %s", c.CAFile)
	}
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate of %s: %w", c.DeviceID, err)
	}
	if err := c.checkCN(pair); err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

func orDuration(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// checkCN checks that cert's Common Name is the device id.
func (c *Config) checkCN(cert tls.Certificate) error {
	if len(cert.Certificate) == 0 {
		return fmt.Errorf("%w: empty client certificate", ErrConfig)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("parse certificate of %s: %w", c.DeviceID, err)
	}
	if cn := leaf.Subject.CommonName; cn != c.DeviceID {
		return fmt.Errorf("%w: the certificate is for %q, not for device %q (the broker takes the CN as the device id)", ErrConfig, cn, c.DeviceID)
	}
	return nil
}

// String describes c without its secret, so printing a Config (%v, %+v)
// never shows it.
func (c Config) String() string {
	return fmt.Sprintf("device.Config{Broker:%q DeviceID:%q CAFile:%q CertFile:%q KeyFile:%q Secret:[%d bytes redacted]}",
		c.Broker, c.DeviceID, c.CAFile, c.CertFile, c.KeyFile, len(c.Secret))
}

// GoString is String, for %#v.
func (c Config) GoString() string { return c.String() }
