package sim

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/pkg/device"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/samplebackend"
)

// DemoOptions configure Demo (the flags of "iotgw sim demo").
type DemoOptions struct {
	// Intruder is a device with a certificate but no registry entry ("":
	// skip that row).
	Intruder string
	// Readings is the number of valid readings each device sends first.
	Readings int
	// Timeout is the longest wait for each outcome.
	Timeout time.Duration
	// Quiet is the extra wait of the rows that expect no reply.
	Quiet time.Duration
	// BackendLog is the request log of the sample backend, to check what
	// reached the backend; BackendStats is its /stats URL instead.
	BackendLog, BackendStats string
	// Metrics is the gateway's /metrics URL, to confirm unknown_device
	// rejections ("": not checked).
	Metrics string
	// JSON prints the rows as one JSON object instead of a table.
	JSON bool
	// Flood is the number of validly signed messages the first device
	// floods in the last row (0 skips it).
	Flood int
	// GatewayClientID is the gateway's mqtt.client_id, which the takeover
	// row asks for with the intruder's certificate.
	GatewayClientID string
	// CounterDevice is a device registered with --freshness counter, for
	// the counter-mode replay row ("": skip that row).
	CounterDevice string
}

// demoRow is one line of the verdict table.
type demoRow struct {
	Scenario string `json:"scenario"`
	Expected string `json:"expected"`
	Observed string `json:"observed"`
	Pass     bool   `json:"pass"`
}

// demoDevice is a device connected through pkg/device that records every
// downlink it receives.
type demoDevice struct {
	*device.Device
	id string

	mu      sync.Mutex // guards replies
	replies []reply
	notify  chan struct{}
}

// reply is one downlink a demo device received, as pkg/device read it.
type reply struct {
	// Verified is true when pkg/device verified it: an envelope naming the
	// device, signed with its downlink key.
	Verified bool
	// Problem says why Verified is false.
	Problem string
	// InReplyTo is the uplink message id, "" for null.
	InReplyTo string
	// Status is the backend's HTTP status after a forward, 0 otherwise.
	Status int
	// Error is the rejection reason after a rejection, "" otherwise.
	Error string
	// TimeFor is the nonce a time reply answers, "" otherwise.
	TimeFor string
	// Raw is the downlink exactly as received.
	Raw []byte
}

// demo runs the scenarios.
type demo struct {
	so   *Options
	o    DemoOptions
	f    *fleet
	a, b *demoDevice
	rows []demoRow
	http *http.Client
	// noticeAt is when each device last got a notice for each reason: the
	// gateway sends at most one per limits.notice_interval (1 s), so a row
	// expecting the same reason again waits out the rest of that second.
	noticeAt map[string]time.Time
	// clockless is the second device reconnected without a clock (row
	// (q)), whose time reply row (r) reflects.
	clockless *demoDevice
}

// Demo connects devices ids[0] and ids[1], sends o.Readings valid
// readings from each, then runs each attack one at a time and waits, for
// at most o.Timeout, for its outcome on the device's own response topic,
// checking every reply's signature with the device's downlink key. It
// prints one row per scenario to out (a table, or JSON) and returns an
// error wrapping ErrFailed when a row did not behave as expected.
func Demo(ctx context.Context, so *Options, o DemoOptions, ids []string, out io.Writer) error {
	if len(ids) != 2 {
		return fmt.Errorf("sim demo: want two device ids, got %d", len(ids))
	}
	f, err := openFleet(so, ids)
	if err != nil {
		return err
	}
	d := &demo{so: so, o: o, f: f, http: &http.Client{Timeout: 5 * time.Second}}
	if d.a, err = d.connect(ctx, ids[0], f.secrets[ids[0]]); err != nil {
		return err
	}
	defer d.a.Close()
	if d.b, err = d.connect(ctx, ids[1], f.secrets[ids[1]]); err != nil {
		return err
	}
	defer d.b.Close()
	defer func() {
		if d.clockless != nil {
			d.clockless.Close()
		}
	}()

	accepted := d.valid(ctx)
	steps := []func(context.Context) demoRow{
		func(ctx context.Context) demoRow { return d.replay(ctx, accepted) },
		d.tampered,
		d.stale,
		d.identity,
		d.crossTopic,
		d.noCert,
		d.future,
		d.wrongSecret,
		d.intruder,
		d.malformed,
		d.foreignCA,
		d.reflectedNotice,
		d.reflectedReply,
		d.takeover,
		d.flooding, // it empties the first device's rate-limit bucket: the rows after use other devices
		d.noClock,
		d.reflectedTime,
		d.counterReplay,
	}
	for _, step := range steps {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.rows = append(d.rows, step(ctx))
	}
	failed := 0
	for _, r := range d.rows {
		if !r.Pass {
			failed++
		}
	}
	if o.JSON {
		err = json.NewEncoder(out).Encode(struct {
			Rows   []demoRow `json:"rows"`
			Failed int       `json:"failed"`
		}{d.rows, failed})
	} else {
		err = printTable(out, d.rows)
	}
	if err != nil {
		return fmt.Errorf("print: %w", err)
	}
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d scenarios did not behave as expected", ErrFailed, failed, len(d.rows))
	}
	return nil
}

// connect connects id through pkg/device and records its downlinks,
// which pkg/device verifies with secret's downlink key.
func (d *demo) connect(ctx context.Context, id string, secret []byte, opts ...func(*device.Config)) (*demoDevice, error) {
	dev := &demoDevice{id: id, notify: make(chan struct{}, 1)}
	var err error
	dev.Device, err = d.f.device(ctx, id, secret, false, dev.received, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect %s to %s: %w", id, d.so.Broker, err)
	}
	return dev, nil
}

func (dev *demoDevice) received(r *device.Reply, err error) {
	rep := reply{Verified: err == nil, InReplyTo: r.InReplyTo, Status: r.Status, Error: r.Reason, TimeFor: r.TimeFor, Raw: r.Raw}
	if err != nil {
		rep.Problem = strings.TrimPrefix(err.Error(), "device: ")
	}
	dev.mu.Lock()
	dev.replies = append(dev.replies, rep)
	dev.mu.Unlock()
	select {
	case dev.notify <- struct{}{}:
	default:
	}
}

// message returns a new message of dev signed with its secret, timestamp
// ts, and its message id.
func (dev *demoDevice) message(ts int64, payload []byte) (id string, raw []byte) {
	m := dev.Sign(time.Unix(ts, 0), payload)
	return m.ID, m.Raw
}

// mark returns a position in the reply history; replyTo only looks after it.
func (dev *demoDevice) mark() int {
	dev.mu.Lock()
	defer dev.mu.Unlock()
	return len(dev.replies)
}

// replyTo waits up to d for a reply after mark whose in_reply_to is id
// ("" matches a null in_reply_to; a time reply, which has none, matches
// nothing).
func (dev *demoDevice) replyTo(ctx context.Context, mark int, id string, d time.Duration) (reply, bool) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		dev.mu.Lock()
		for _, r := range dev.replies[mark:] {
			if r.InReplyTo == id && r.TimeFor == "" {
				dev.mu.Unlock()
				return r, true
			}
		}
		dev.mu.Unlock()
		select {
		case <-dev.notify:
		case <-deadline.C:
			return reply{}, false
		case <-ctx.Done():
			return reply{}, false
		}
	}
}

// since returns the replies after mark.
func (dev *demoDevice) since(mark int) []reply {
	dev.mu.Lock()
	defer dev.mu.Unlock()
	return append([]reply(nil), dev.replies[mark:]...)
}

// publish sends raw on topic at QoS 1 and waits for the broker's PUBACK.
func (d *demo) publish(dev *demoDevice, topic string, raw []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.o.Timeout)
	defer cancel()
	return dev.PublishRaw(ctx, topic, raw)
}

func dataTopic(id string) string { return "device/" + id + "/data" }

func reading(seq int) []byte {
	return fmt.Appendf(nil, `{"temperature":%.1f,"humidity":%d,"seq":%d}`, 21.5+float64(seq)/10, 40+seq, seq)
}

// valid sends the readings from both devices, adds one row per device and
// returns one accepted message of the first device, for the replay.
func (d *demo) valid(ctx context.Context) []byte {
	var first []byte
	for _, dev := range []*demoDevice{d.a, d.b} {
		row := demoRow{Scenario: "(a) valid readings from " + dev.id,
			Expected: fmt.Sprintf("%d forwarded, status 200", d.o.Readings)}
		ok, seen, problems := 0, 0, []string(nil)
		for i := 1; i <= d.o.Readings; i++ {
			m, problem := d.request(ctx, dev, reading(i))
			if problem != "" {
				problems = append(problems, problem)
			} else {
				ok++
				if first == nil {
					first = m.Raw
				}
			}
			if n, err := d.backendCount(ctx, m.ID); err == nil && n > 0 {
				seen++
			}
		}
		row.Observed = fmt.Sprintf("%d/%d status 200", ok, d.o.Readings)
		if d.hasBackend() {
			row.Observed += fmt.Sprintf(", backend got %d/%d", seen, d.o.Readings)
		}
		if len(problems) > 0 {
			row.Observed += " (" + problems[0] + ")"
		}
		row.Pass = ok == d.o.Readings && len(problems) == 0 && (!d.hasBackend() || seen == d.o.Readings)
		d.rows = append(d.rows, row)
	}
	return first
}

// request sends payload from dev as any device does, with pkg/device's
// RequestMessage (signed now, published at QoS 1, its reply awaited and
// verified with the downlink key), and returns the message and "" when
// the backend answered 200, else what happened instead.
func (d *demo) request(ctx context.Context, dev *demoDevice, payload []byte) (device.Message, string) {
	m := dev.Sign(time.Now(), payload)
	ctx, cancel := context.WithTimeout(ctx, 2*d.o.Timeout) // the PUBACK, then the reply
	defer cancel()
	r, err := dev.RequestMessage(ctx, m)
	var rej *device.RejectedError
	switch {
	case errors.As(err, &rej):
		return m, "got rejected: " + rej.Reason
	case errors.Is(err, context.DeadlineExceeded):
		return m, "no reply"
	case err != nil:
		return m, strings.TrimPrefix(err.Error(), "device: ")
	case r.Status != 200:
		return m, "got forwarded, status " + strconv.Itoa(r.Status)
	}
	return m, ""
}

// expectRejection publishes raw from dev on topic and expects the signed
// rejection reason for message id (in_reply_to null when id is "").
func (d *demo) expectRejection(ctx context.Context, name string, dev *demoDevice, topic string, id string, raw []byte, reason string) demoRow {
	return d.expectRejectionN(ctx, name, dev, topic, id, raw, reason, 0)
}

// expectRejectionN is expectRejection where the backend must hold
// backendWant deliveries of id afterwards.
func (d *demo) expectRejectionN(ctx context.Context, name string, dev *demoDevice, topic string, id string, raw []byte, reason string, backendWant int) demoRow {
	row := demoRow{Scenario: name, Expected: "rejected: " + reason}
	defer d.noticeSlot(ctx, dev, reason)()
	mark := dev.mark()
	if err := d.publish(dev, topic, raw); err != nil {
		row.Observed = "publish failed: " + err.Error()
		return row
	}
	r, got := dev.replyTo(ctx, mark, id, d.o.Timeout)
	switch {
	case !got:
		row.Observed = fmt.Sprintf("no reply in %v", d.o.Timeout)
	case !r.Verified:
		row.Observed = r.Problem
	default:
		row.Observed = describe(r)
		row.Pass = r.Error == reason
	}
	if id != "" {
		row.Observed, row.Pass = d.checkBackend(ctx, row.Observed, row.Pass, id, backendWant)
	}
	return row
}

// noticeSlot waits until the gateway will send dev a notice for reason
// again (it sends at most one per limits.notice_interval, 1 s, per device
// and reason), and returns the function that records that one was sent.
func (d *demo) noticeSlot(ctx context.Context, dev *demoDevice, reason string) func() {
	if d.noticeAt == nil {
		d.noticeAt = map[string]time.Time{}
	}
	key := dev.id + " " + reason
	if wait := time.Until(d.noticeAt[key].Add(1100 * time.Millisecond)); wait > 0 {
		sleepCtx(ctx, wait)
	}
	return func() { d.noticeAt[key] = time.Now() }
}

// describe summarizes a verified reply.
func describe(r reply) string {
	if r.Error != "" {
		return "rejected: " + r.Error
	}
	return "forwarded, status " + strconv.Itoa(r.Status)
}

// replay re-publishes an accepted message byte for byte.
func (d *demo) replay(ctx context.Context, accepted []byte) demoRow {
	const name = "(b) replay of an accepted message"
	if accepted == nil {
		return demoRow{Scenario: name, Expected: "rejected: replay", Observed: "skipped: no message was accepted in (a)"}
	}
	e, err := envelope.Parse(accepted, envelope.Limits{})
	if err != nil {
		return demoRow{Scenario: name, Expected: "rejected: replay", Observed: err.Error()}
	}
	return d.expectRejectionN(ctx, name, d.a, dataTopic(d.a.id), string(e.MessageID), accepted, "replay", 1)
}

// tampered changes the payload after signing.
func (d *demo) tampered(ctx context.Context) demoRow {
	id, raw := d.a.message(time.Now().Unix(), []byte(`{"temperature":22.0}`))
	raw = []byte(strings.Replace(string(raw), `{"temperature":22.0}`, `{"temperature":99.0}`, 1))
	return d.expectRejection(ctx, "(c) tampered payload (22.0 → 99.0), old signature", d.a, dataTopic(d.a.id), id, raw, "bad_signature")
}

func (d *demo) stale(ctx context.Context) demoRow {
	id, raw := d.a.message(time.Now().Unix()-600, reading(90))
	return d.expectRejection(ctx, "(d) stale timestamp (now - 600 s)", d.a, dataTopic(d.a.id), id, raw, "stale")
}

// identity: the second device's message, correctly signed with its own
// secret, published on the first device's topic by the first device.
func (d *demo) identity(ctx context.Context) demoRow {
	id, raw := d.b.message(time.Now().Unix(), reading(91))
	return d.expectRejection(ctx, fmt.Sprintf("(e) %s's message on %s's topic", d.b.id, d.a.id), d.a, dataTopic(d.a.id), id, raw, "identity_mismatch")
}

func (d *demo) future(ctx context.Context) demoRow {
	id, raw := d.a.message(time.Now().Unix()+600, reading(92))
	return d.expectRejection(ctx, "(h) future timestamp (now + 600 s)", d.a, dataTopic(d.a.id), id, raw, "stale")
}

func (d *demo) wrongSecret(ctx context.Context) demoRow {
	id := string(envelope.NewMessageID())
	e := envelope.New(envelope.NewMessageID(), d.a.id, time.Now().Unix(), id, reading(93))
	raw := envelope.AppendJSON(nil, &e)
	return d.expectRejection(ctx, "(i) signed with a wrong secret", d.a, dataTopic(d.a.id), id, raw, "bad_signature")
}

func (d *demo) malformed(ctx context.Context) demoRow {
	raw := fmt.Appendf(nil, `{"device_id":%q,"timestamp":%d,"payload":{"temperature":1}}`, d.a.id, time.Now().Unix())
	return d.expectRejection(ctx, "(k) malformed envelope (fields missing)", d.a, dataTopic(d.a.id), "", raw, "malformed")
}

// crossTopic: the first device publishes, on the second device's topic, a
// message correctly signed for the second device (as if it had stolen the
// secret). Only the broker's ACL stands in the way.
func (d *demo) crossTopic(ctx context.Context) demoRow {
	row := demoRow{Scenario: fmt.Sprintf("(f) %s publishes on %s's topic", d.a.id, d.b.id),
		Expected: "no reply, not forwarded (broker ACL)"}
	markA, markB := d.a.mark(), d.b.mark()
	id, raw := d.b.message(time.Now().Unix(), reading(94))
	if err := d.publish(d.a, dataTopic(d.b.id), raw); err != nil {
		// A broker may also refuse the PUBLISH outright; that blocks it too.
		row.Observed = "publish refused: " + err.Error()
	}
	obs, pass := d.silence(ctx, d.b, markB, id)
	if strays := replyIDs(d.a.since(markA), id); strays > 0 && pass {
		obs, pass = fmt.Sprintf("%s got %d replies about it", d.a.id, strays), false
	}
	if row.Observed != "" {
		obs = row.Observed + "; " + obs
	}
	row.Observed, row.Pass = d.checkBackend(ctx, obs, pass, id, 0)
	return row
}

// silence checks that dev gets no reply to id: it sends dev a valid probe
// on its own topic and waits for the probe's reply (the gateway handles a
// device's messages in order), then --quiet more.
func (d *demo) silence(ctx context.Context, dev *demoDevice, mark int, id string) (string, bool) {
	if _, problem := d.request(ctx, dev, reading(99)); problem != "" {
		return fmt.Sprintf("probe from %s not answered with 200 (%s)", dev.id, problem), false
	}
	if ok := sleepCtx(ctx, d.o.Quiet); !ok {
		return ctx.Err().Error(), false
	}
	if n := replyIDs(dev.since(mark), id); n > 0 {
		r, _ := dev.replyTo(ctx, mark, id, 0)
		return "got a reply: " + describe(r), false
	}
	return "no reply", true
}

// replyIDs counts the replies to id.
func replyIDs(rs []reply, id string) int {
	n := 0
	for _, r := range rs {
		if r.InReplyTo == id {
			n++
		}
	}
	return n
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// noCert connects with no client certificate.
func (d *demo) noCert(ctx context.Context) demoRow {
	cfg, _ := d.f.tlsConfig("") // cannot fail without a certificate
	return d.expectRefused(ctx, "(g) client with no certificate", cfg)
}

// foreignCA connects with a self-signed certificate for the first device's
// id: right name, wrong CA.
func (d *demo) foreignCA(ctx context.Context) demoRow {
	name := fmt.Sprintf("(l) self-signed certificate claiming %s", d.a.id)
	cfg, _ := d.f.tlsConfig("")
	cert, err := selfSigned(d.a.id)
	if err != nil {
		return demoRow{Scenario: name, Expected: "TLS handshake refused", Observed: err.Error()}
	}
	cfg.Certificates = []tls.Certificate{cert}
	return d.expectRefused(ctx, name, cfg)
}

func (d *demo) expectRefused(ctx context.Context, name string, cfg *tls.Config) demoRow {
	row := demoRow{Scenario: name, Expected: "TLS handshake refused"}
	c, err := d.so.dial(ctx, connectOptions{ClientID: "nocert-demo", TLS: cfg})
	if err == nil {
		c.Disconnect(0)
		row.Observed = "connected"
		return row
	}
	row.Observed, row.Pass = "refused: "+shortErr(err), true
	return row
}

// shortErr keeps the most telling part of a connection error.
func shortErr(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "tls: "):
		s = s[strings.LastIndex(s, "tls: "):]
	case strings.Contains(s, "broken pipe"), strings.Contains(s, "connection reset"), strings.Contains(s, "EOF"):
		s = "connection closed by the broker"
	}
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}

func selfSigned(cn string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-signed certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-signed certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// intruder connects with a valid certificate for an unregistered id and
// sends a message signed with a made-up secret.
func (d *demo) intruder(ctx context.Context) demoRow {
	id := d.o.Intruder
	row := demoRow{Scenario: fmt.Sprintf("(j) unregistered device %q with a valid certificate", id),
		Expected: "no reply, not forwarded (unknown_device)"}
	if id == "" {
		row.Observed, row.Pass = "skipped (--intruder \"\")", true
		return row
	}
	before, metricErr := d.rejectedCount(ctx, "unknown_device")
	// It has no secret the gateway knows: any will do.
	dev, err := d.connect(ctx, id, envelope.NewMessageID())
	if err != nil {
		row.Observed = err.Error()
		return row
	}
	defer dev.Close()
	msgID, raw := dev.message(time.Now().Unix(), reading(95))
	if err := d.publish(dev, dataTopic(id), raw); err != nil {
		row.Observed = "publish failed: " + err.Error()
		return row
	}
	counted := ""
	if d.o.Metrics != "" && metricErr == nil {
		// Wait until the gateway has judged it, then a moment for a reply.
		deadline := time.Now().Add(d.o.Timeout)
		for {
			after, err := d.rejectedCount(ctx, "unknown_device")
			if err == nil && after > before {
				counted = fmt.Sprintf("; gateway counted unknown_device +%g", after-before)
				break
			}
			if time.Now().After(deadline) || !sleepCtx(ctx, 100*time.Millisecond) {
				counted = fmt.Sprintf("; unknown_device not counted in %v", d.o.Timeout)
				break
			}
		}
	}
	// A valid probe from the first device shows the gateway is alive and
	// waits --quiet for a late reply.
	obs, pass := d.silence(ctx, d.a, d.a.mark(), msgID)
	if pass {
		obs += counted
		pass = counted == "" || strings.HasPrefix(counted, "; gateway counted")
	}
	if rs := dev.since(0); len(rs) > 0 {
		obs, pass = fmt.Sprintf("got %d replies", len(rs)), false
	}
	if metricErr != nil {
		obs += "; metrics: " + metricErr.Error()
		pass = false
	}
	row.Observed, row.Pass = d.checkBackend(ctx, obs, pass, msgID, 0)
	return row
}

func (d *demo) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return body, nil
}

func (d *demo) hasBackend() bool { return d.o.BackendLog != "" || d.o.BackendStats != "" }

// checkBackend adds what the backend saw of id to an observation: it must
// have answered id with 200 exactly want times.
func (d *demo) checkBackend(ctx context.Context, obs string, pass bool, id string, want int) (string, bool) {
	if !d.hasBackend() {
		return obs, pass
	}
	n, err := d.backendCount(ctx, id)
	switch {
	case err != nil:
		return obs + "; backend: " + err.Error(), false
	case n == want && want == 0:
		return obs + ", backend: not seen", pass
	case n == want:
		return obs + fmt.Sprintf(", backend: still %d", n), pass
	default:
		return obs + fmt.Sprintf(", backend got it %d times", n), false
	}
}

// backendCount returns how many times the backend answered id with 200.
func (d *demo) backendCount(ctx context.Context, id string) (int, error) {
	if d.o.BackendStats != "" {
		u, err := url.Parse(d.o.BackendStats)
		if err != nil {
			return 0, err
		}
		q := u.Query()
		q.Set("message_id", id)
		u.RawQuery = q.Encode()
		body, err := d.get(ctx, u.String())
		if err != nil {
			return 0, err
		}
		var s samplebackend.Stats
		if err := json.Unmarshal(body, &s); err != nil || s.MessageOK == nil {
			return 0, fmt.Errorf("%s is not the sample backend's /stats", d.o.BackendStats)
		}
		return *s.MessageOK, nil
	}
	if d.o.BackendLog == "" {
		return 0, errors.New("no backend given")
	}
	f, err := os.Open(d.o.BackendLog)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), id) {
			continue
		}
		var rec samplebackend.Record
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.MessageID == id && rec.Status == http.StatusOK {
			n++
		}
	}
	return n, sc.Err()
}

// printTable prints the rows as an aligned text table.
func printTable(w io.Writer, rows []demoRow) error {
	head := []string{"scenario", "expected", "observed", "result"}
	cells := make([][]string, 0, len(rows))
	for _, r := range rows {
		res := "PASS"
		if !r.Pass {
			res = "FAIL"
		}
		cells = append(cells, []string{r.Scenario, r.Expected, r.Observed, res})
	}
	width := columnWidths(head, cells, tableWidth)
	var b strings.Builder
	line := func(c []string) {
		wrapped := make([][]string, len(c))
		height := 1
		for i, s := range c {
			wrapped[i] = wrap(s, width[i])
			height = max(height, len(wrapped[i]))
		}
		for l := range height {
			var ln strings.Builder
			for i := range c {
				var s string
				if l < len(wrapped[i]) {
					s = wrapped[i][l]
				}
				if i > 0 {
					ln.WriteString(" | ")
				}
				ln.WriteString(s)
				if i < len(c)-1 {
					ln.WriteString(strings.Repeat(" ", width[i]-len([]rune(s))))
				}
			}
			b.WriteString(strings.TrimRight(ln.String(), " "))
			b.WriteByte('\n')
		}
	}
	line(head)
	for i, wd := range width {
		if i > 0 {
			b.WriteString("-+-")
		}
		b.WriteString(strings.Repeat("-", wd))
	}
	b.WriteByte('\n')
	passed := 0
	for _, c := range cells {
		line(c)
		if c[3] == "PASS" {
			passed++
		}
	}
	fmt.Fprintf(&b, "\n%d of %d scenarios behaved as expected.\n", passed, len(rows))
	_, err := io.WriteString(w, b.String())
	return err
}

// tableWidth is the widest line printTable writes, in characters.
const tableWidth = 120

// columnWidths returns each column's width: its widest cell when the
// table fits total; otherwise the columns share what the last one (the
// verdict, never wrapped) and the separators leave, each narrow column
// keeping its width and the wide ones splitting the rest evenly.
func columnWidths(head []string, cells [][]string, total int) []int {
	width := make([]int, len(head))
	for i, h := range head {
		width[i] = len([]rune(h))
		for _, c := range cells {
			width[i] = max(width[i], len([]rune(c[i])))
		}
	}
	last := len(width) - 1
	budget := total - 3*last - width[last]
	sum := 0
	for _, wd := range width[:last] {
		sum += wd
	}
	if sum <= budget {
		return width
	}
	order := make([]int, last)
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return width[order[a]] < width[order[b]] })
	for n, i := range order {
		share := budget / (last - n)
		width[i] = max(min(width[i], share), len([]rune(head[i])))
		budget -= width[i]
	}
	return width
}

// wrap breaks s into lines of at most width characters at spaces; a word
// longer than width is cut.
func wrap(s string, width int) []string {
	var lines []string
	var cur []rune
	for _, word := range strings.Fields(s) {
		wr := []rune(word)
		if len(cur) > 0 && len(cur)+1+len(wr) > width {
			lines = append(lines, string(cur))
			cur = cur[:0]
		}
		if len(cur) > 0 {
			cur = append(cur, ' ')
		}
		cur = append(cur, wr...)
		for len(cur) > width {
			lines = append(lines, string(cur[:width]))
			cur = append([]rune(nil), cur[width:]...)
		}
	}
	if len(cur) > 0 || len(lines) == 0 {
		lines = append(lines, string(cur))
	}
	return lines
}

// reflectedNotice republishes the signed notice of a malformed message as
// an uplink: an attacker needs only the device's TLS credentials for it.
// Downlinks are signed with the downlink key, so it is a bad_signature.
func (d *demo) reflectedNotice(ctx context.Context) demoRow {
	return d.reflect(ctx, "(m) signed notice reflected as an uplink", []byte("not an envelope"), "")
}

// reflectedReply republishes the signed reply to a valid reading as an
// uplink.
func (d *demo) reflectedReply(ctx context.Context) demoRow {
	id, raw := d.a.message(time.Now().Unix(), reading(95))
	return d.reflect(ctx, "(n) signed backend reply reflected as an uplink", raw, id)
}

// reflect sends trigger from the first device, takes the signed downlink
// answering it (in_reply_to id), and publishes that downlink on the
// device's data topic: it must be rejected as bad_signature and never
// reach the backend.
func (d *demo) reflect(ctx context.Context, name string, trigger []byte, id string) demoRow {
	if id == "" { // the trigger is malformed: its notice is rate-limited too
		defer d.noticeSlot(ctx, d.a, "malformed")()
	}
	mark := d.a.mark()
	if err := d.publish(d.a, dataTopic(d.a.id), trigger); err != nil {
		return demoRow{Scenario: name, Expected: "rejected: bad_signature", Observed: "publish failed: " + err.Error()}
	}
	r, got := d.a.replyTo(ctx, mark, id, d.o.Timeout)
	if !got || !r.Verified {
		return demoRow{Scenario: name, Expected: "rejected: bad_signature", Observed: "no signed downlink to reflect"}
	}
	e, err := envelope.Parse(r.Raw, envelope.Limits{})
	if err != nil {
		return demoRow{Scenario: name, Expected: "rejected: bad_signature", Observed: err.Error()}
	}
	return d.expectRejection(ctx, name, d.a, dataTopic(d.a.id), string(e.MessageID), r.Raw, "bad_signature")
}

// flooding sends --flood validly signed messages from the first device as
// fast as the broker takes them. With the gateway's default limits
// (limits.device_rate 100/s, burst 200) most are refused as rate_limited
// before the HMAC, the device gets about one notice a second rather than
// one per message, and the second device is still answered.
func (d *demo) flooding(ctx context.Context) demoRow {
	row := demoRow{Scenario: fmt.Sprintf("(p) %s floods %d validly signed messages", d.a.id, d.o.Flood),
		Expected: "most rate_limited, ≤ ~1 notice/s, " + d.b.id + " still answered"}
	if d.o.Flood <= 0 {
		row.Observed, row.Pass = "skipped (--flood 0)", true
		return row
	}
	before, metricErr := d.rejectedCount(ctx, "rate_limited")
	markA := d.a.mark()
	start := time.Now()
	sent := make([]*device.Pending, 0, d.o.Flood)
	for i := range d.o.Flood {
		sent = append(sent, d.a.Send(d.a.Sign(time.Now(), reading(1000+i))))
	}
	fctx, cancel := context.WithTimeout(ctx, 4*d.o.Timeout)
	defer cancel()
	for _, p := range sent {
		if err := p.Wait(fctx); err != nil {
			row.Observed = "flood publish: " + err.Error()
			return row
		}
	}
	// The second device, right behind the flood.
	probeAt := time.Now()
	if _, problem := d.request(ctx, d.b, reading(98)); problem != "" {
		row.Observed = fmt.Sprintf("%s not answered with 200 during the flood (%s)", d.b.id, problem)
		return row
	}
	bLatency := time.Since(probeAt)
	sleepCtx(ctx, d.o.Quiet) // late notices
	elapsed := time.Since(start)
	notices := 0
	for _, r := range d.a.since(markA) {
		if r.Verified && r.Error == "rate_limited" {
			notices++
		}
	}
	maxNotices := int(elapsed.Seconds()) + 2
	row.Observed = fmt.Sprintf("%d rate_limited notices in %.1f s, %s answered in %d ms", notices, elapsed.Seconds(), d.b.id, bLatency.Milliseconds())
	row.Pass = notices >= 1 && notices <= maxNotices
	if d.o.Metrics != "" {
		after, err := d.rejectedCount(ctx, "rate_limited")
		if err != nil || metricErr != nil {
			row.Observed += "; metrics: " + errors.Join(err, metricErr).Error()
			row.Pass = false
			return row
		}
		refused := int(after - before)
		row.Observed = fmt.Sprintf("%d/%d refused (rate_limited), ", refused, d.o.Flood) + row.Observed
		row.Pass = row.Pass && refused >= d.o.Flood/2
	}
	return row
}

// rejectedCount reads iotgw_messages_rejected_total for reason.
func (d *demo) rejectedCount(ctx context.Context, reason string) (float64, error) {
	if d.o.Metrics == "" {
		return 0, nil
	}
	body, err := d.get(ctx, d.o.Metrics)
	if err != nil {
		return 0, err
	}
	series := `iotgw_messages_rejected_total{reason="` + reason + `"} `
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, errors.New("no " + reason + " series in " + d.o.Metrics)
}

// takeover connects the --intruder's certificate with the gateway's client
// id, first with a persistent session (to inherit the gateway's queued
// messages), then with a clean one (to discard them), and subscribes to
// everything; meanwhile the first device sends readings. The broker's
// device listener gives the intruder its CN as client id instead
// (use_username_as_clientid), so it gets nothing and every reading is
// answered and forwarded once.
func (d *demo) takeover(ctx context.Context) demoRow {
	row := demoRow{Scenario: fmt.Sprintf("(o) %q connects with the gateway's client id %q", d.o.Intruder, d.o.GatewayClientID),
		Expected: "intruder gets nothing; readings all answered 200"}
	if d.o.Intruder == "" {
		row.Observed, row.Pass = "skipped (--intruder \"\")", true
		return row
	}
	cfg, err := d.f.tlsConfig(d.o.Intruder)
	if err != nil {
		row.Observed = err.Error()
		return row
	}
	var mu sync.Mutex
	got := 0
	count := func(mqtt.Client, mqtt.Message) { mu.Lock(); got++; mu.Unlock() }
	const perRound = 3
	ok, seen, total := 0, 0, 0
	var problems []string
	for round, persistent := range []bool{true, false} {
		c, err := d.so.dial(ctx, connectOptions{ClientID: d.o.GatewayClientID, TLS: cfg, Persistent: persistent, Subscribe: "#", OnMessage: count})
		if err != nil {
			problems = append(problems, "intruder connect: "+shortErr(err))
			continue
		}
		for i := range perRound {
			total++
			m, problem := d.request(ctx, d.a, reading(100+round*perRound+i))
			if problem == "" {
				ok++
			} else {
				problems = append(problems, problem)
			}
			if n, err := d.backendCount(ctx, m.ID); err == nil && n == 1 {
				seen++
			}
		}
		c.Disconnect(100)
	}
	mu.Lock()
	intruderGot := got
	mu.Unlock()
	row.Observed = fmt.Sprintf("intruder got %d; %d/%d answered 200", intruderGot, ok, 2*perRound)
	if d.hasBackend() {
		row.Observed += fmt.Sprintf(", backend got %d/%d once", seen, 2*perRound)
	}
	if len(problems) > 0 {
		row.Observed += " (" + problems[0] + ")"
	}
	row.Pass = intruderGot == 0 && ok == 2*perRound && total == 2*perRound && len(problems) == 0 && (!d.hasBackend() || seen == 2*perRound)
	return row
}
