package device

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// QoS is the MQTT quality of service of every publish and subscription.
const QoS = 1

// DataTopic returns the topic device id publishes on.
func DataTopic(id string) string { return envelope.DataTopic(id) }

// ResponseTopic returns the topic the gateway answers device id on.
func ResponseTopic(id string) string { return envelope.ResponseTopic(id) }

// Device is one connected device. Its methods are safe for concurrent use.
type Device struct {
	id          string
	client      mqtt.Client
	publishOnly bool
	now         func() time.Time
	onDown      func(*Reply, error)

	signMu  sync.Mutex // guards signMAC
	signMAC hash.Hash

	downMu  sync.Mutex // guards downMAC
	downMAC hash.Hash

	mu          sync.Mutex // guards waiters and timeWaiters
	waiters     map[string]chan result
	timeWaiters map[string]chan timeAnswer // by nonce (SyncTime)

	clock atomic.Pointer[clockSync] // the gateway's time, once SyncTime got it

	closeOnce sync.Once
	closed    chan struct{}

	counter *Counter // Config.Counter: counter mode
}

// result is what a Request waits for.
type result struct {
	r   *Reply
	err error
}

// Dial connects cfg.DeviceID to the broker over mutual TLS (MQTT 3.1.1,
// clean session, client id = the device id), subscribes to its response
// topic at QoS 1 (unless cfg.PublishOnly), and returns once the broker
// granted the subscription, so no reply is missed. It fails when ctx ends
// first, the broker refuses the connection or the subscription, or cfg is
// invalid (ErrConfig, also for a certificate whose CN is not the device
// id). After a lost connection Paho reconnects by itself (unless
// cfg.NoReconnect) and Dial's handler subscribes again.
func Dial(ctx context.Context, cfg Config) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	secret := append([]byte(nil), cfg.Secret...)
	d := &Device{
		id:          cfg.DeviceID,
		now:         cfg.Now,
		counter:     cfg.Counter,
		onDown:      cfg.OnDownlink,
		signMAC:     envelope.NewMAC(secret),
		downMAC:     envelope.NewDownlinkMAC(secret),
		waiters:     map[string]chan result{},
		timeWaiters: map[string]chan timeAnswer{},
		publishOnly: cfg.PublishOnly,
		closed:      make(chan struct{}),
	}
	if d.now == nil {
		d.now = time.Now
	}
	timeout := orDuration(cfg.ConnectTimeout, DefaultConnectTimeout)
	topic := ResponseTopic(d.id)
	subscribed := make(chan error, 1)
	opts := mqtt.NewClientOptions().
		AddBroker(brokerURL(cfg.Broker)).
		SetClientID(d.id).
		SetTLSConfig(tlsCfg).
		SetProtocolVersion(4). // MQTT 3.1.1, without Paho's fallback to 3.1 and a second attempt
		SetCleanSession(true).
		SetOrderMatters(false).
		SetKeepAlive(orDuration(cfg.KeepAlive, DefaultKeepAlive)).
		SetConnectTimeout(timeout).
		SetWriteTimeout(timeout).
		SetAutoReconnect(!cfg.NoReconnect).
		SetMaxReconnectInterval(orDuration(cfg.MaxReconnectInterval, DefaultMaxReconnectInterval)).
		SetConnectRetry(false)
	if cfg.PublishOnly {
		subscribed <- nil
	} else {
		// Clean session: subscribe again on every (re)connection.
		opts.SetOnConnectHandler(func(c mqtt.Client) {
			t := c.Subscribe(topic, QoS, d.received)
			go func() {
				err := subackError(t, topic, timeout)
				select {
				case subscribed <- err:
				default:
				}
			}()
		})
	}
	if cfg.OpenConnection != nil {
		opts.SetCustomOpenConnectionFn(cfg.OpenConnection)
	}
	d.client = mqtt.NewClient(opts)
	t := d.client.Connect()
	select {
	case <-t.Done():
	case <-ctx.Done():
		d.client.Disconnect(0)
		return nil, fmt.Errorf("connect %s: %w", d.id, ctx.Err())
	}
	if err := t.Error(); err != nil {
		return nil, fmt.Errorf("connect %s: %w", d.id, err)
	}
	select {
	case err := <-subscribed:
		if err != nil {
			d.client.Disconnect(0)
			return nil, fmt.Errorf("connect %s: %w", d.id, err)
		}
		return d, nil
	case <-ctx.Done():
		d.client.Disconnect(0)
		return nil, fmt.Errorf("connect %s: %w", d.id, ctx.Err())
	}
}

// subackError waits for a SUBSCRIBE's acknowledgement.
func subackError(t mqtt.Token, topic string, timeout time.Duration) error {
	switch {
	case !t.WaitTimeout(timeout):
		return fmt.Errorf("subscribe %s: no SUBACK after %v", topic, timeout)
	case t.Error() != nil:
		return fmt.Errorf("subscribe %s: %w", topic, t.Error())
	}
	if st, ok := t.(*mqtt.SubscribeToken); ok && st.Result()[topic] == 0x80 {
		return fmt.Errorf("subscribe %s: refused by the broker", topic)
	}
	return nil
}

// ID returns the device id.
func (d *Device) ID() string { return d.id }

// String names the device, and nothing of its keys (its HMAC states hold
// key material), for %v, %+v and %s.
func (d *Device) String() string { return "device.Device{ID:" + strconv.Quote(d.id) + "}" }

// GoString is String, for %#v.
func (d *Device) GoString() string { return d.String() }

// Close disconnects, waiting up to 250 ms for in-flight work; Requests
// still waiting for a reply end with ErrClosed. Close may be called more
// than once.
func (d *Device) Close() {
	d.closeOnce.Do(func() {
		close(d.closed)
		d.client.Disconnect(250)
	})
}

// ErrClosed is the error of a Request still waiting when Close was called.
var ErrClosed = errors.New("device: closed")

// Message is a signed envelope ready to send.
type Message struct {
	// ID is its message_id (canonical lowercase UUID text).
	ID string
	// Raw is the envelope's JSON bytes.
	Raw []byte
}

// Sign returns a new signed message with a fresh message id, timestamp at
// (Unix seconds) and payload, which must be one JSON value (it is sent
// verbatim and signed byte for byte).
func (d *Device) Sign(at time.Time, payload []byte) Message {
	id := string(envelope.NewMessageID())
	ts := at.Unix()
	e := envelope.Envelope{DeviceID: d.id, Timestamp: ts, TimestampRaw: strconv.AppendInt(nil, ts, 10),
		MessageID: []byte(id), Payload: payload}
	d.signMu.Lock()
	e.Signature = envelope.SignWith(d.signMAC, &e)
	d.signMu.Unlock()
	return Message{ID: id, Raw: envelope.AppendJSON(make([]byte, 0, 192+len(payload)), &e)}
}

// Pending is a message handed to the MQTT client, awaiting its PUBACK.
type Pending struct {
	// ID is the message id.
	ID  string
	tok mqtt.Token
}

// Wait waits for the broker's PUBACK, or for ctx to end.
func (p *Pending) Wait(ctx context.Context) error {
	select {
	case <-p.tok.Done():
		if err := p.tok.Error(); err != nil {
			return fmt.Errorf("publish %s: %w", p.ID, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("publish %s: %w", p.ID, ctx.Err())
	}
}

// Send publishes m on the device's data topic at QoS 1 without waiting:
// Wait on the result for the PUBACK. Send lets a caller keep several
// messages in flight on one connection.
func (d *Device) Send(m Message) *Pending {
	return &Pending{ID: m.ID, tok: d.client.Publish(DataTopic(d.id), QoS, false, m.Raw)}
}

// Publish signs payload (one JSON value) with the device's secret and the
// device's time (Now), publishes it at QoS 1 and waits for the broker's PUBACK.
// It returns the message id. The PUBACK means the broker has the message,
// not that the gateway accepted it: use Request for the verdict.
func (d *Device) Publish(ctx context.Context, payload []byte) (string, error) {
	m, err := d.next(payload)
	if err != nil {
		return "", err
	}
	return m.ID, d.Send(m).Wait(ctx)
}

// PublishRaw publishes raw bytes on topic at QoS 1 and waits for the
// PUBACK. It is for tests and tools that must send what a correct device
// never would (a replayed or tampered message); devices use Publish.
func (d *Device) PublishRaw(ctx context.Context, topic string, raw []byte) error {
	p := &Pending{ID: topic, tok: d.client.Publish(topic, QoS, false, raw)}
	return p.Wait(ctx)
}

// Request signs and publishes payload like Publish, then waits for the
// downlink that answers it (in_reply_to = its message id) and returns it
// verified. It is RequestMessage with a new message signed at Now.
func (d *Device) Request(ctx context.Context, payload []byte) (*Reply, error) {
	m, err := d.next(payload)
	if err != nil {
		return nil, err
	}
	return d.RequestMessage(ctx, m)
}

// RequestMessage publishes m (from Sign) at QoS 1 and waits for the
// downlink answering it, verified. The waiter is registered before the
// publish, so a reply that beats the PUBACK is not lost.
//
// The error is a *RejectedError when the gateway rejected the message
// (the Reply is returned too); wraps ErrAnswerNotVerified (and
// ErrBadReplySignature) when a downlink names the message (in_reply_to)
// but does not verify under the downlink key: do not act on it, and do
// not wait for another answer: the gateway signs with the secret it holds
// for the device, so most likely this device's secret is wrong or not
// (yet) registered (docs/PROTOCOL.md, section 4); and wraps ctx.Err() when
// ctx ends first (the gateway may still forward the message: its answer
// is then dropped, or passed to Config.OnDownlink).
//
// To retry after a timeout without risking a duplicate, send the same m
// again: the gateway answers it, or rejects it as "replay" when the first
// copy was accepted (while m's timestamp is fresh, ±5 minutes). Run at
// most one RequestMessage for a given m at a time: the waiter is keyed by
// its message id.
func (d *Device) RequestMessage(ctx context.Context, m Message) (*Reply, error) {
	if d.publishOnly {
		return nil, ErrPublishOnly
	}
	ch := make(chan result, 1)
	d.mu.Lock()
	d.waiters[m.ID] = ch
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.waiters, m.ID)
		d.mu.Unlock()
	}()
	if err := d.Send(m).Wait(ctx); err != nil {
		return nil, err
	}
	select {
	case res := <-ch:
		return res.r, res.err
	case <-ctx.Done():
		return nil, fmt.Errorf("reply to %s: %w", m.ID, ctx.Err())
	case <-d.closed:
		return nil, fmt.Errorf("reply to %s: %w", m.ID, ErrClosed)
	}
}

// received handles one downlink. It runs on Paho's goroutines and never
// blocks: a waiter's channel has room for its one result.
func (d *Device) received(_ mqtt.Client, msg mqtt.Message) {
	at := d.now()
	r, err := d.parse(msg.Payload(), at)
	if d.onDown != nil {
		d.onDown(r, err)
	}
	if r.TimeFor != "" {
		d.timeReply(r.Raw, at)
		return
	}
	if r.InReplyTo == "" {
		return
	}
	d.mu.Lock()
	ch, ok := d.waiters[r.InReplyTo]
	if ok {
		delete(d.waiters, r.InReplyTo)
	}
	d.mu.Unlock()
	if !ok {
		return
	}
	switch {
	case err == nil && r.Reason != "":
		err = &RejectedError{Reason: r.Reason, MessageID: r.InReplyTo}
	case errors.Is(err, ErrBadReplySignature):
		err = fmt.Errorf("reply to %s: %w (%w)", r.InReplyTo, ErrAnswerNotVerified, err)
	}
	ch <- result{r, err}
}

// parse parses and verifies one downlink.
func (d *Device) parse(raw []byte, at time.Time) (*Reply, error) {
	raw = append([]byte(nil), raw...)
	d.downMu.Lock()
	defer d.downMu.Unlock()
	return parseDownlink(d.id, d.downMAC, raw, at)
}

// ErrBadReplySignature is wrapped by the error of a downlink that names
// another device or whose signature is not valid under the device's
// downlink key.
var ErrBadReplySignature = errors.New("device: reply signature invalid")

// ErrAnswerNotVerified is wrapped by the error of RequestMessage when a
// downlink answers the message (its in_reply_to is the message's id) but
// does not verify under the device's downlink key. The gateway signs its
// answer with the secret the registry holds for the device, so this most
// likely means the device's secret is wrong, or not (yet) registered (a
// bad_signature notice the device cannot read). It is not a timeout:
// waiting longer will not bring a verifiable answer.
var ErrAnswerNotVerified = errors.New("device: the answer to this message does not verify: this device's secret is most likely wrong or not (yet) registered at the gateway")

// ErrPublishOnly is the error of Request on a device dialled with
// Config.PublishOnly.
var ErrPublishOnly = errors.New("device: Request on a publish-only device")

// ErrMalformedReply is wrapped by the error of a downlink that is not a
// well-formed envelope with a reply or notice payload.
var ErrMalformedReply = errors.New("device: malformed reply")

// RejectedError is the error of a Request the gateway rejected, from its
// verified rejection notice.
type RejectedError struct {
	// Reason is the stable reason code: malformed, unknown_device,
	// identity_mismatch, stale, bad_signature, replay, rate_limited,
	// quota_exceeded, ... (docs/PROTOCOL.md).
	Reason string
	// MessageID is the rejected message's id.
	MessageID string
}

func (e *RejectedError) Error() string {
	return "device: message " + e.MessageID + " rejected: " + e.Reason
}
