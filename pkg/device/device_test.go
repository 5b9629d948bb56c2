package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/pkg/envelope"
)

const (
	testID     = "sensor-1"
	testSecret = "s3cret-of-sensor-1"
)

var testNow = time.Unix(1_700_000_000, 0)

// fakeToken is a completed mqtt.Token.
type fakeToken struct{ err error }

func (fakeToken) Wait() bool                     { return true }
func (fakeToken) WaitTimeout(time.Duration) bool { return true }
func (fakeToken) Done() <-chan struct{}          { c := make(chan struct{}); close(c); return c }
func (t fakeToken) Error() error                 { return t.err }

// fakeClient is an mqtt.Client whose Publish hands each message to answer,
// which plays the gateway.
type fakeClient struct {
	mqtt.Client // nil: any other method panics
	answer      func(topic string, raw []byte)
	disconnect  func()
}

func (c *fakeClient) Disconnect(uint) { c.disconnect() }

func (c *fakeClient) Publish(topic string, _ byte, _ bool, payload any) mqtt.Token {
	c.answer(topic, payload.([]byte))
	return fakeToken{}
}

// fakeMessage is a downlink as Paho would deliver it.
type fakeMessage struct {
	mqtt.Message
	payload []byte
}

func (m fakeMessage) Payload() []byte { return m.payload }

func newTestDevice(t *testing.T, answer func(d *Device, topic string, raw []byte)) *Device {
	t.Helper()
	d := &Device{
		id: testID, now: func() time.Time { return testNow },
		signMAC: envelope.NewMAC([]byte(testSecret)), downMAC: envelope.NewDownlinkMAC([]byte(testSecret)),
		waiters: map[string]chan result{}, timeWaiters: map[string]chan timeAnswer{}, closed: make(chan struct{}),
	}
	d.client = &fakeClient{answer: func(topic string, raw []byte) { answer(d, topic, raw) }}
	return d
}

// downlink builds a downlink for id signed with key (raw HMAC key bytes).
func downlink(key []byte, id string, payload []byte) []byte {
	e := envelope.New(key, id, testNow.Unix(), string(envelope.NewMessageID()), payload)
	return envelope.AppendJSON(nil, &e)
}

func downKey() []byte { return envelope.DownlinkKey([]byte(testSecret)) }

// uplinkID parses an uplink sent by the device and checks it verifies
// under the device's uplink key, as the gateway would.
func uplinkID(t *testing.T, raw []byte) string {
	t.Helper()
	e, err := envelope.Parse(raw, envelope.Limits{})
	if err != nil {
		t.Fatalf("uplink does not parse: %v", err)
	}
	if e.DeviceID != testID || e.Timestamp != testNow.Unix() || !envelope.Verify(envelope.NewMAC([]byte(testSecret)), &e) {
		t.Fatalf("uplink %s is not a valid message of %s at %d", raw, testID, testNow.Unix())
	}
	return string(e.MessageID)
}

func TestRequest(t *testing.T) {
	tests := []struct {
		name string
		// answer returns the downlink for uplink message id.
		answer  func(id string) []byte
		wantErr error // errors.Is target; nil means success
		reason  string
		status  int
	}{
		{name: "verified 200 reply",
			answer: func(id string) []byte {
				return downlink(downKey(), testID, envelope.ReplyPayload([]byte(id), 200, []byte(`{"ok":true}`)))
			},
			status: 200},
		{name: "verified rejection notice",
			answer: func(id string) []byte {
				return downlink(downKey(), testID, envelope.RejectionPayload([]byte(id), "stale"))
			},
			reason: "stale"},
		{name: "reply signed with the uplink key (reflected)",
			answer: func(id string) []byte {
				return downlink([]byte(testSecret), testID, envelope.ReplyPayload([]byte(id), 200, nil))
			},
			wantErr: ErrBadReplySignature},
		{name: "reply signed with another secret's downlink key",
			answer: func(id string) []byte {
				return downlink(envelope.DownlinkKey([]byte("other")), testID, envelope.ReplyPayload([]byte(id), 200, nil))
			},
			wantErr: ErrBadReplySignature},
		{name: "notice forged with the uplink key",
			answer: func(id string) []byte {
				return downlink([]byte(testSecret), testID, envelope.RejectionPayload([]byte(id), "replay"))
			},
			wantErr: ErrBadReplySignature},
		{name: "reply naming another device",
			answer: func(id string) []byte {
				return downlink(downKey(), "sensor-2", envelope.ReplyPayload([]byte(id), 200, nil))
			},
			wantErr: ErrBadReplySignature},
		{name: "tampered status after signing",
			answer: func(id string) []byte {
				raw := downlink(downKey(), testID, envelope.ReplyPayload([]byte(id), 500, nil))
				return []byte(strings.Replace(string(raw), `"status":500`, `"status":200`, 1))
			},
			wantErr: ErrBadReplySignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDevice(t, func(d *Device, topic string, raw []byte) {
				if topic != "device/"+testID+"/data" {
					t.Errorf("published on %q", topic)
				}
				// Delivered before the PUBACK, as a fast gateway may.
				d.received(nil, fakeMessage{payload: tc.answer(uplinkID(t, raw))})
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			r, err := d.Request(ctx, []byte(`{"t":1}`))
			var rej *RejectedError
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if errors.As(err, &rej) {
					t.Fatalf("a forged downlink came back as a rejection %q", rej.Reason)
				}
			case tc.reason != "":
				if !errors.As(err, &rej) || rej.Reason != tc.reason {
					t.Fatalf("err = %v, want *RejectedError{%s}", err, tc.reason)
				}
				if r == nil || r.Reason != tc.reason || rej.MessageID != r.InReplyTo {
					t.Fatalf("reply = %+v", r)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if r.Status != tc.status || string(r.Body) != `{"ok":true}` || r.Rejected() {
					t.Fatalf("reply = %+v", r)
				}
			}
			if len(d.waiters) != 0 {
				t.Errorf("%d waiters left", len(d.waiters))
			}
		})
	}
}

// A reply to another message, or an unsigned one, must not complete a
// Request: it times out with the context.
func TestRequestIgnoresOtherReplies(t *testing.T) {
	var seen []error
	var mu sync.Mutex
	d := newTestDevice(t, func(d *Device, _ string, raw []byte) {
		uplinkID(t, raw)
		other := string(envelope.NewMessageID())
		d.received(nil, fakeMessage{payload: downlink(downKey(), testID, envelope.ReplyPayload([]byte(other), 200, nil))})
		d.received(nil, fakeMessage{payload: downlink(downKey(), testID, envelope.RejectionPayload(nil, "malformed"))})
		d.received(nil, fakeMessage{payload: []byte("not an envelope")})
	})
	d.onDown = func(_ *Reply, err error) { mu.Lock(); seen = append(seen, err); mu.Unlock() }
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := d.Request(ctx, []byte(`1`))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen[0] != nil || seen[1] != nil || !errors.Is(seen[2], ErrMalformedReply) {
		t.Fatalf("OnDownlink saw %v", seen)
	}
}

// Concurrent Requests each get their own reply, whatever order the
// replies arrive in.
func TestConcurrentRequests(t *testing.T) {
	const n = 64
	var mu sync.Mutex
	var pending []string
	all := make(chan struct{})
	d := newTestDevice(t, func(d *Device, _ string, raw []byte) {
		mu.Lock()
		pending = append(pending, uplinkID(t, raw))
		full := len(pending) == n
		mu.Unlock()
		if full {
			close(all)
		}
	})
	go func() {
		<-all
		// Answer in reverse order, each with its status 200+index.
		for i := len(pending) - 1; i >= 0; i-- {
			go d.received(nil, fakeMessage{payload: downlink(downKey(), testID,
				envelope.ReplyPayload([]byte(pending[i]), 200, []byte(`"`+pending[i]+`"`)))})
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := d.Request(ctx, []byte(`{}`))
			switch {
			case err != nil:
				errs <- err
			case string(r.Body) != `"`+r.InReplyTo+`"`:
				errs <- errors.New("got the reply of another request")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestPublishSigns(t *testing.T) {
	var got []byte
	d := newTestDevice(t, func(_ *Device, _ string, raw []byte) { got = raw })
	id, err := d.Publish(context.Background(), []byte(`{"temperature":21.5}`))
	if err != nil {
		t.Fatal(err)
	}
	if uplinkID(t, got) != id {
		t.Fatalf("Publish returned %s for %s", id, got)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Broker: "ssl://127.0.0.1:8883", CAFile: "ca.crt", CertFile: "d.crt", KeyFile: "d.key", DeviceID: "d1", Secret: []byte("x")}
	tests := []struct {
		name   string
		change func(*Config)
		want   string // substring; "" means valid
	}{
		{"valid", func(*Config) {}, ""},
		{"tls:// accepted", func(c *Config) { c.Broker = "tls://h:8883" }, ""},
		{"plain tcp refused", func(c *Config) { c.Broker = "tcp://h:1883" }, "not a TLS URL"},
		{"bad device id", func(c *Config) { c.DeviceID = "../x" }, "device id"},
		{"no secret", func(c *Config) { c.Secret = nil }, "no secret"},
		{"no key file", func(c *Config) { c.KeyFile = "" }, "required"},
		{"both TLS and files", func(c *Config) { c.TLS = &tls.Config{MinVersion: tls.VersionTLS12} }, "not both"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.change(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrConfig with %q", err, tc.want)
			}
		})
	}
}

// A certificate for another device is refused before connecting: the
// broker would take its CN as the device id and drop every message.
func TestDialRefusesCertificateOfAnotherDevice(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sensor-2"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Broker: "ssl://127.0.0.1:1", DeviceID: testID, Secret: []byte(testSecret),
		TLS: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}}
	_, err = Dial(context.Background(), cfg)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), `"sensor-2"`) {
		t.Fatalf("err = %v, want ErrConfig naming the certificate's CN", err)
	}
}

// Close ends a Request that is still waiting for its reply.
func TestCloseEndsRequest(t *testing.T) {
	sent := make(chan struct{})
	d := newTestDevice(t, func(*Device, string, []byte) { close(sent) })
	d.client.(*fakeClient).disconnect = func() {}
	go func() { <-sent; d.Close(); d.Close() }()
	_, err := d.Request(context.Background(), []byte(`1`))
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestConfigPrintsNoSecret(t *testing.T) {
	c := Config{DeviceID: testID, Secret: []byte(testSecret), Broker: "ssl://127.0.0.1:8883"}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(verb, c); strings.Contains(s, testSecret) || !strings.Contains(s, testID) {
			t.Errorf("%s: %s", verb, s)
		}
		if s := fmt.Sprintf(verb, &c); strings.Contains(s, testSecret) {
			t.Errorf("%s of a pointer: %s", verb, s)
		}
		d := newTestDevice(t, nil)
		if s := fmt.Sprintf(verb, d); s != `device.Device{ID:"`+testID+`"}` {
			t.Errorf("%s of a Device: %s", verb, s)
		}
	}
}
