package mqttio

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/internal/secretfile"
)

// Config holds the broker connection settings.
type Config struct {
	// Broker is the URL of the broker's gateway listener, ssl://host:8884
	// (tls:// and mqtts:// also accepted); not the devices' 8883, where the
	// gateway's two connections would knock each other off. Required.
	Broker string `mapstructure:"broker"`
	// ClientID is the stable client id of the persistent session; the reply
	// connection uses ClientID+"-replies". It must contain ":", which no
	// device id ([A-Za-z0-9_.-]) can, so a device can never be given the
	// gateway's session. Default "iotgw:gateway".
	ClientID string `mapstructure:"client_id"`
	// CAFile is the PEM CA bundle that signed the broker's certificate. Required.
	CAFile string `mapstructure:"ca_file"`
	// CertFile is the gateway's client certificate (CN gateway). Required.
	CertFile string `mapstructure:"cert_file"`
	// KeyFile is the gateway's private key, a secret file: refused if its
	// group or other users may read it (chmod 600). Required.
	KeyFile string `mapstructure:"key_file"`
	// Topic is the uplink subscription. Default "device/+/data".
	Topic string `mapstructure:"topic"`
	// ShareGroup, when set, subscribes as $share/<group>/<topic> so several
	// gateways split the load: the broker gives each message to one member
	// of the group. At most MaxShareGroupBytes of printable UTF-8 with no
	// "/", "+", "#" or white space. Treat it as a secret: a device that
	// knows it can join the group and make its share of the messages
	// disappear (docs/SECURITY.md). Default "" (a plain subscription).
	ShareGroup string `mapstructure:"share_group"`
	// KeepAlive is the MQTT keep-alive. Default 30s.
	KeepAlive time.Duration `mapstructure:"keepalive"`
	// ConnectTimeout bounds one connection attempt. Default 10s.
	ConnectTimeout time.Duration `mapstructure:"connect_timeout"`
	// MaxReconnectInterval caps the reconnect backoff. Default 30s.
	MaxReconnectInterval time.Duration `mapstructure:"max_reconnect_interval"`
	// MaxDisconnected is how long the gateway may be without its broker
	// connections (from its start, or from a loss) before it exits
	// non-zero, so that its supervisor's restart policy recovers it: 0
	// (never exit) or at least MaxReconnectInterval. Default 5m.
	MaxDisconnected time.Duration `mapstructure:"max_disconnected"`
}

// GatewayIdentity is the Common Name the gateway's certificate must carry:
// the broker takes it as the username, and its ACL grants "gateway" the
// uplink subscription (pki.GatewayIdentity, mosquitto/acl).
const GatewayIdentity = "gateway"

// DefaultClientID is mqtt.client_id's default. Before issue 9 it was
// "iotgw-gateway"; a gateway upgraded with the default starts a new
// persistent session, and the broker keeps the old one (and whatever was
// queued on it) until it expires.
const DefaultClientID = "iotgw:gateway"

// ClientIDMark is the character every mqtt.client_id must contain: device
// ids cannot, so no device's client id (forced to its certificate CN by
// the broker's device listener) equals the gateway's.
const ClientIDMark = ":"

// DefaultConfig returns the defaults (Broker and files empty).
func DefaultConfig() Config {
	return Config{ClientID: DefaultClientID, Topic: envelope.DataSubscription, KeepAlive: 30 * time.Second,
		ConnectTimeout: 10 * time.Second, MaxReconnectInterval: 30 * time.Second, MaxDisconnected: 5 * time.Minute}
}

// MaxShareGroupBytes bounds mqtt.share_group.
const MaxShareGroupBytes = 64

// MinShareGroupBytes is the shortest mqtt.share_group accepted: a device
// that knows the group name can join it and make the broker drop its turn
// of the gateways' messages (docs/SCALING.md), so the name must be a
// secret nobody guesses, like a password.
const MinShareGroupBytes = 16

// validShareGroup checks mqtt.share_group. The error never quotes the
// value: the group name is a secret.
func validShareGroup(g string) error {
	if g == "" {
		return nil
	}
	if len(g) < MinShareGroupBytes {
		return fmt.Errorf("mqtt.share_group: %d bytes, at least %d: it is a secret (a device that guesses it can make the broker drop messages); use a long random name", len(g), MinShareGroupBytes)
	}
	if len(g) > MaxShareGroupBytes {
		return fmt.Errorf("mqtt.share_group: %d bytes, at most %d", len(g), MaxShareGroupBytes)
	}
	if !utf8.ValidString(g) {
		return errors.New("mqtt.share_group: not valid UTF-8")
	}
	for _, r := range g {
		switch {
		case r == '/' || r == '+' || r == '#':
			return errors.New(`mqtt.share_group: must not contain "/", "+" or "#" (it is one level of the topic filter $share/<group>/<topic>)`)
		case unicode.IsSpace(r) || !unicode.IsPrint(r):
			return errors.New("mqtt.share_group: must not contain white space, NUL or control characters")
		}
	}
	return nil
}

// Validate checks the settings and that the TLS files load.
func (c Config) Validate() error {
	if c.Broker == "" {
		return errors.New("mqtt.broker: required (ssl://host:8884, the broker's gateway listener; devices use 8883)")
	}
	u, err := url.Parse(c.Broker)
	if err != nil || u.Host == "" || u.Port() == "" {
		return fmt.Errorf("mqtt.broker: %q is not a URL like ssl://host:8884 (the broker's gateway listener)", c.Broker)
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts":
	default:
		return fmt.Errorf("mqtt.broker: scheme %q is not TLS; use ssl://", u.Scheme)
	}
	if c.ClientID == "" || strings.ContainsAny(c.ClientID, " \t\n+#/") {
		return fmt.Errorf("mqtt.client_id: %q must be non-empty with no spaces, + # or /", c.ClientID)
	}
	if !strings.Contains(c.ClientID, ClientIDMark) {
		return fmt.Errorf("mqtt.client_id: %q must contain %q, which no device id can, so that no device can take the gateway's session (e.g. %q)", c.ClientID, ClientIDMark, DefaultClientID)
	}
	if c.Topic == "" {
		return errors.New("mqtt.topic: required")
	}
	if err := validShareGroup(c.ShareGroup); err != nil {
		return err
	}
	if c.KeepAlive < time.Second || c.ConnectTimeout <= 0 || c.MaxReconnectInterval <= 0 {
		return errors.New("mqtt.keepalive/connect_timeout/max_reconnect_interval: must be positive (keepalive ≥ 1s)")
	}
	if c.MaxDisconnected != 0 && c.MaxDisconnected < c.MaxReconnectInterval {
		return fmt.Errorf("mqtt.max_disconnected: %s: 0 (never exit) or at least mqtt.max_reconnect_interval (%s), so that one reconnect backoff does not stop the gateway", c.MaxDisconnected, c.MaxReconnectInterval)
	}
	_, err = c.TLSConfig()
	return err
}

// TLSConfig loads the CA and client key pair.
func (c Config) TLSConfig() (*tls.Config, error) {
	for _, f := range []struct{ key, path string }{{"mqtt.ca_file", c.CAFile}, {"mqtt.cert_file", c.CertFile}, {"mqtt.key_file", c.KeyFile}} {
		if f.path == "" {
			return nil, fmt.Errorf("%s: required", f.key)
		}
	}
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("mqtt.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("mqtt.ca_file: %s holds no PEM certificate", c.CAFile)
	}
	certPEM, err := os.ReadFile(c.CertFile)
	if err != nil {
		return nil, fmt.Errorf("mqtt.cert_file: %w", err)
	}
	keyPEM, err := secretfile.Read(c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("mqtt.key_file: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("mqtt.cert_file/mqtt.key_file: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("mqtt.cert_file: %w", err)
	}
	if cn := leaf.Subject.CommonName; cn != GatewayIdentity {
		// A device's certificate connects and subscribes, but the ACL
		// gives it only its own topics: nothing would ever arrive.
		return nil, fmt.Errorf("mqtt.cert_file: %s has CN %q, not the gateway identity %q: this is not the gateway's certificate (iotgw pki init makes gateway.crt)", c.CertFile, cn, GatewayIdentity)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// Message is one received uplink.
type Message struct {
	Topic     string
	Payload   []byte
	Duplicate bool
	ack       func()
}

// Ack acknowledges the message to the broker (PUBACK). It acts once; an
// ack after the connection was lost is dropped and the broker redelivers.
func (m *Message) Ack() { m.ack() }

// NewMessage builds a Message with an ack callback, for tests.
func NewMessage(topic string, payload []byte, ack func()) *Message {
	return &Message{Topic: topic, Payload: payload, ack: ack}
}

// Handler receives each message. It is called from Paho's router
// goroutine, one message at a time, and must not block: hand off and return.
type Handler func(m *Message)

// Client is the gateway's two broker connections. c holds the persistent
// session (clean_session=false, cfg.ClientID) that receives device/+/data
// with manual acks. pub (cfg.ClientID + "-replies", clean session)
// publishes the replies. They are apart because the receive path may block
// for backpressure (a full validation queue stops Paho's reader): on a
// shared connection that would also stop the PUBACKs of the replies from
// being read, Paho would run out of message ids after 65,535 unacknowledged
// replies, and replies would be refused. Seen under a 100,000-message burst.
type Client struct {
	cfg       Config
	log       *zap.Logger
	c         mqtt.Client
	pub       mqtt.Client
	connected atomic.Bool
	onConnect func()
	// links follows both connections (Flapping, Watch) on the clock now.
	links *linkState
	now   func() time.Time
	// repliesUp is closed once the reply connection first connected.
	repliesUp chan struct{}
}

// ReplyClientSuffix is appended to mqtt.client_id for the reply connection.
const ReplyClientSuffix = "-replies"

// New prepares a client; Run connects it. The session subscribes to
// cfg.Topic and to each topic in also (the time requests,
// envelope.TimeSubscription), all at QoS 1 and, with cfg.ShareGroup, as
// $share/<group>/<topic>; h gets the messages of every one of them
// (Message.Topic tells them apart).
func New(cfg Config, h Handler, log *zap.Logger, also ...string) (*Client, error) {
	tlsCfg, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	broker := strings.Replace(strings.Replace(cfg.Broker, "mqtts://", "ssl://", 1), "tls://", "ssl://", 1)
	cl := &Client{cfg: cfg, log: log, repliesUp: make(chan struct{}), now: time.Now}
	cl.links = newLinkState(func() time.Time { return cl.now() }, max(10*time.Second, 2*cfg.MaxReconnectInterval))
	const writeTimeout = 10 * time.Second
	handler := func(_ mqtt.Client, m mqtt.Message) {
		h(&Message{Topic: m.Topic(), Payload: m.Payload(), Duplicate: m.Duplicate(), ack: m.Ack})
	}
	// logTopic is the subscription as logged: the group name is a secret.
	filters := make(map[string]byte, 1+len(also))
	var logTopics []string
	for _, t := range append([]string{cfg.Topic}, also...) {
		if cfg.ShareGroup != "" {
			filters["$share/"+cfg.ShareGroup+"/"+t] = 1
			logTopics = append(logTopics, "$share/<mqtt.share_group>/"+t)
			continue
		}
		filters[t] = 1
		logTopics = append(logTopics, t)
	}
	logTopic := strings.Join(logTopics, ",")
	// What both connections share: broker, TLS with write coalescing,
	// keep-alive, reconnection.
	base := func(clientID string) *mqtt.ClientOptions {
		return mqtt.NewClientOptions().
			AddBroker(broker).
			SetClientID(clientID).
			SetTLSConfig(tlsCfg).
			SetKeepAlive(cfg.KeepAlive).
			SetConnectTimeout(cfg.ConnectTimeout).
			SetAutoReconnect(true).
			SetMaxReconnectInterval(cfg.MaxReconnectInterval).
			SetWriteTimeout(writeTimeout).
			SetCustomOpenConnectionFn(OpenTLS(tlsCfg, writeTimeout))
	}
	opts := base(cfg.ClientID).
		SetCleanSession(false).
		SetAutoAckDisabled(true).
		SetOrderMatters(true).
		SetDefaultPublishHandler(handler). // session messages may arrive before Subscribe returns
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			cl.connected.Store(false)
			log.Warn("broker connection lost; reconnecting", zap.Error(err))
			if cl.links.down(linkSession) {
				cl.flapWarning()
			}
		}).
		SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) {
			log.Info("reconnecting to broker")
		}).
		SetOnConnectHandler(func(c mqtt.Client) {
			cl.links.up(linkSession)
			t := c.SubscribeMultiple(filters, handler)
			go func() {
				if !t.WaitTimeout(cfg.ConnectTimeout) || t.Error() != nil {
					log.Error("subscribe failed; reconnecting", zap.String("topic", logTopic), zap.Error(t.Error()))
					return
				}
				cl.connected.Store(true)
				log.Info("connected and subscribed", zap.String("broker", cfg.Broker), zap.String("topic", logTopic))
				if cl.onConnect != nil {
					cl.onConnect()
				}
			}()
		})
	cl.c = mqtt.NewClient(opts)
	cl.pub = mqtt.NewClient(base(cfg.ClientID + ReplyClientSuffix).
		SetCleanSession(true).
		SetOrderMatters(false).
		SetOnConnectHandler(func(mqtt.Client) { cl.links.up(linkReplies) }).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			log.Warn("reply connection lost; reconnecting", zap.Error(err))
			if cl.links.down(linkReplies) {
				cl.flapWarning()
			}
		}))
	return cl, nil
}

// OnConnect sets f to run each time the session is connected and
// subscribed. Call it before Connect; f must not block.
func (c *Client) OnConnect(f func()) { c.onConnect = f }

// Connected reports whether the session is up and subscribed, the reply
// connection is up, and they are not flapping (Flapping).
func (c *Client) Connected() bool {
	return c.connected.Load() && c.c.IsConnectionOpen() && c.pub.IsConnectionOpen() && !c.Flapping()
}

// Connect connects, retrying with backoff until it succeeds or ctx ends. A
// broker that is down at start is retried, not fatal; Paho reconnects
// after later losses by itself.
func (c *Client) Connect(ctx context.Context) error {
	// Replies first, so that the first messages of the session can be
	// answered.
	if err := c.connectLoop(ctx, c.pub, "reply connection"); err != nil {
		return err
	}
	close(c.repliesUp)
	return c.connectLoop(ctx, c.c, "session")
}

// RepliesUp is closed once the reply connection has first connected
// (Connect); before that, Publish refuses every reply.
func (c *Client) RepliesUp() <-chan struct{} { return c.repliesUp }

func (c *Client) connectLoop(ctx context.Context, mc mqtt.Client, what string) error {
	delay := 500 * time.Millisecond
	for {
		t := mc.Connect()
		select {
		case <-t.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
		if t.Error() == nil {
			return nil
		}
		c.log.Warn("cannot connect to broker; retrying", zap.String("connection", what), zap.String("broker", c.cfg.Broker),
			zap.Duration("retry_in", delay), zap.Error(t.Error()))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
		delay = min(delay*2, c.cfg.MaxReconnectInterval)
	}
}

// Publish sends payload to topic at QoS 1 without waiting for the broker's
// PUBACK (never block a worker on a reply). Paho queues it while
// reconnecting.
//
// It returns an error when Paho refused the message outright (not
// connected, no free message id, or its outgoing queue stayed full for the
// write timeout); the broker's PUBACK is not waited for.
func (c *Client) Publish(topic string, payload []byte) error {
	t := c.pub.Publish(topic, 1, false, payload)
	select {
	case <-t.Done():
		return t.Error()
	default:
		return nil
	}
}

// Disconnect closes the session, waiting up to quiesce for queued work.
func (c *Client) Disconnect(quiesce time.Duration) {
	c.connected.Store(false)
	var ms uint
	if n := quiesce.Milliseconds(); n > 0 && n <= math.MaxUint32 {
		ms = uint(n)
	}
	c.c.Disconnect(ms)
	c.pub.Disconnect(ms)
}

// ConnState reports each connection apart: receive is the session that
// receives device/+/data (up and subscribed), replies the connection that
// publishes replies and notices.
func (c *Client) ConnState() (receive, replies bool) {
	return c.connected.Load() && c.c.IsConnectionOpen(), c.pub.IsConnectionOpen()
}
