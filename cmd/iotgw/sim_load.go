package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/device"
	"github.com/iotgw/iotgw/pkg/envelope"
)

// loadOptions are the flags of "iotgw sim load".
type loadOptions struct {
	devices        int
	deviceIDs      string
	idPrefix       string
	messages       int
	rate           float64
	connections    int
	window         int
	dialParallel   int
	publishTimeout time.Duration
	expectReplies  bool
	replyTimeout   time.Duration
	record         string
	json           bool
}

func newSimLoadCmd(so *simOptions) *cobra.Command {
	var o loadOptions
	cmd := &cobra.Command{
		Use:   "load --devices N|--device-ids A,B,... --messages M [--rate R] [--expect-replies] [--json]",
		Short: "Publish signed QoS 1 messages from many devices and report the throughput",
		Long: `load connects every device with its own certificate and connection (the
broker's ACL lets a certificate publish only on its own device/<id>/data,
so one connection cannot speak for several devices), then each device
publishes --messages signed QoS 1 messages with the payload
{"seq":<1..M>,"sent_ns":<Unix nanoseconds at send>}.

--devices N uses the ids <--id-prefix>1 .. <--id-prefix>N; each needs a
certificate (iotgw pki issue) and a registered secret (iotgw device add).
Every connection costs a TLS handshake, a socket (mind ulimit -n) and a few
goroutines here and in the broker; see docs/DEMO.md.

--rate paces the total over all devices (0: as fast as the window allows).
Each connection keeps at most --window PUBLISHes awaiting their PUBACK.
With --expect-replies each device also subscribes to device/<id>/response,
verifies every reply's signature and waits up to --reply-timeout for one
reply per acknowledged message; the summary gives reply counts and
round-trip latency (publish to verified reply). --record FILE writes
"<device_id> <message_id>" for every message the broker acknowledged.

The summary is printed as text, or with --json as one JSON object. The exit
status is 1 when a publish failed or, with --expect-replies, when a reply
was missing or failed verification.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := so.check(); err != nil {
				return err
			}
			ids, err := o.ids()
			if err != nil {
				return err
			}
			if o.messages < 1 || o.rate < 0 || o.window < 1 || o.dialParallel < 1 || o.publishTimeout <= 0 || o.replyTimeout <= 0 {
				return usagef("sim load: need --messages ≥ 1, --rate ≥ 0, --window ≥ 1, --dial-parallel ≥ 1 and positive timeouts")
			}
			if o.connections != 0 && o.connections != len(ids) {
				return usagef("sim load: --connections %d: every device needs its own connection (the broker ACL allows a certificate "+
					"to publish only on its own topic); issue a certificate per device and leave --connections at 0", o.connections)
			}
			return runLoad(cmd.Context(), so, o, ids, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.devices, "devices", 0, "number of devices, named <id-prefix>1..N")
	f.StringVar(&o.deviceIDs, "device-ids", "", "comma-separated device ids, instead of --devices")
	f.StringVar(&o.idPrefix, "id-prefix", "sim-", "prefix of the ids made by --devices")
	f.IntVar(&o.messages, "messages", 100, "messages per device")
	f.Float64Var(&o.rate, "rate", 0, "total messages per second over all devices (0: unpaced)")
	f.IntVar(&o.connections, "connections", 0, "connections (0: one per device, the only value the project ACL allows)")
	f.IntVar(&o.window, "window", 64, "PUBLISHes awaiting PUBACK per connection")
	f.IntVar(&o.dialParallel, "dial-parallel", 32, "connections set up at once")
	f.DurationVar(&o.publishTimeout, "publish-timeout", 10*time.Second, "longest wait for one PUBACK")
	f.BoolVar(&o.expectReplies, "expect-replies", false, "subscribe to the replies, verify and count them")
	f.DurationVar(&o.replyTimeout, "reply-timeout", 30*time.Second, "with --expect-replies, longest wait for the last replies")
	f.StringVar(&o.record, "record", "", "write \"<device_id> <message_id>\" per acknowledged message to this file")
	f.BoolVar(&o.json, "json", false, "print the summary as one JSON object")
	return cmd
}

// ids returns the device ids from --devices or --device-ids.
func (o *loadOptions) ids() ([]string, error) {
	if (o.devices > 0) == (o.deviceIDs != "") {
		return nil, usagef("sim load: give exactly one of --devices N (N ≥ 1) and --device-ids")
	}
	if o.deviceIDs != "" {
		ids, err := splitIDs("--device-ids", o.deviceIDs)
		if err == nil && len(ids) == 0 {
			err = usagef("sim load: --device-ids is empty")
		}
		return ids, err
	}
	ids := make([]string, o.devices)
	for i := range ids {
		ids[i] = o.idPrefix + strconv.Itoa(i+1)
	}
	if last := ids[len(ids)-1]; !envelope.ValidDeviceID(last) {
		return nil, usagef("sim load: --id-prefix %q makes %q, not a device id (1-64 characters of [A-Za-z0-9_.-])", o.idPrefix, last)
	}
	return ids, nil
}

// loadSummary is the result of a load run; --json prints it as is.
type loadSummary struct {
	Devices           int           `json:"devices"`
	Connections       int           `json:"connections"`
	MessagesPerDevice int           `json:"messages_per_device"`
	Planned           int           `json:"planned"`
	Rate              float64       `json:"rate"`
	Window            int           `json:"window"`
	ConnectSeconds    float64       `json:"connect_seconds"`
	Published         int64         `json:"published"`
	Acked             int64         `json:"acked"`
	PublishErrors     int64         `json:"publish_errors"`
	FirstError        string        `json:"first_error,omitempty"`
	DurationSeconds   float64       `json:"duration_seconds"`
	MsgPerSecond      float64       `json:"msg_per_sec"`
	Interrupted       bool          `json:"interrupted,omitempty"`
	Replies           *replySummary `json:"replies,omitempty"`
}

// replySummary counts the replies of a load run.
type replySummary struct {
	Received     int64              `json:"received"`
	OK           int64              `json:"ok"`
	OtherStatus  int64              `json:"other_status"`
	Rejected     map[string]int64   `json:"rejected"`
	BadSignature int64              `json:"bad_signature"`
	Unmatched    int64              `json:"unmatched"`
	Missing      int64              `json:"missing"`
	WaitSeconds  float64            `json:"wait_seconds"`
	LatencyMS    map[string]float64 `json:"latency_ms"`
}

// loadDevice is one connected simulated device.
type loadDevice struct {
	id  string
	dev *device.Device

	mu   sync.Mutex           // guards sent
	sent map[string]time.Time // message id → publish time, awaiting a reply
}

// load is the state of one run.
type load struct {
	so  *simOptions
	o   loadOptions
	f   *fleet
	dev []*loadDevice

	published, acked, errs atomic.Int64
	firstErr               atomic.Pointer[string]
	next                   atomic.Int64 // pacing slot

	rmu       sync.Mutex // guards the reply counters below
	replies   replySummary
	matched   int64
	latencies []time.Duration

	record *bufio.Writer
	recMu  sync.Mutex
}

func runLoad(ctx context.Context, so *simOptions, o loadOptions, ids []string, out io.Writer) error {
	f, err := openFleet(ctx, so, ids)
	if err != nil {
		return err
	}
	l := &load{so: so, o: o, f: f, replies: replySummary{Rejected: map[string]int64{}}}
	if o.record != "" {
		rf, err := os.Create(o.record)
		if err != nil {
			return fmt.Errorf("record: %w", err)
		}
		defer rf.Close()
		l.record = bufio.NewWriter(rf)
	}
	t0 := time.Now()
	err = l.connect(ctx, ids)
	defer l.disconnect()
	if err != nil {
		return err
	}
	s := loadSummary{Devices: len(ids), Connections: len(ids), MessagesPerDevice: o.messages, Planned: len(ids) * o.messages,
		Rate: o.rate, Window: o.window, ConnectSeconds: time.Since(t0).Seconds()}

	start := time.Now()
	var wg sync.WaitGroup
	for _, d := range l.dev {
		wg.Add(1)
		go func() { defer wg.Done(); l.publish(ctx, d, start) }()
	}
	wg.Wait()
	elapsed := time.Since(start)
	s.Published, s.Acked, s.PublishErrors = l.published.Load(), l.acked.Load(), l.errs.Load()
	if p := l.firstErr.Load(); p != nil {
		s.FirstError = *p
	}
	s.DurationSeconds = elapsed.Seconds()
	if elapsed > 0 {
		s.MsgPerSecond = float64(s.Acked) / elapsed.Seconds()
	}
	if o.expectReplies {
		s.Replies = l.awaitReplies(ctx, s.Acked)
	}
	s.Interrupted = ctx.Err() != nil
	if l.record != nil {
		if err := l.record.Flush(); err != nil {
			return fmt.Errorf("record: %w", err)
		}
	}
	if o.json {
		err = json.NewEncoder(out).Encode(s)
	} else {
		err = printLoad(out, s)
	}
	if err != nil {
		return fmt.Errorf("print: %w", err)
	}
	switch {
	case s.Interrupted:
		return ctx.Err()
	case s.PublishErrors > 0:
		return fmt.Errorf("%w: %d publishes failed (first: %s)", errSimFailed, s.PublishErrors, s.FirstError)
	case s.Replies != nil && (s.Replies.Missing > 0 || s.Replies.BadSignature > 0):
		return fmt.Errorf("%w: %d replies missing, %d failed verification", errSimFailed, s.Replies.Missing, s.Replies.BadSignature)
	}
	return nil
}

// connect connects every device, --dial-parallel at a time.
func (l *load) connect(ctx context.Context, ids []string) error {
	l.dev = make([]*loadDevice, len(ids))
	sem := make(chan struct{}, l.o.dialParallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed int
	var first error
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d, err := l.dial(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if first == nil {
					first = err
				}
				return
			}
			l.dev[i] = d
		}()
	}
	wg.Wait()
	if failed > 0 {
		return fmt.Errorf("%d of %d devices could not connect; first: %w", failed, len(ids), first)
	}
	return nil
}

func (l *load) dial(ctx context.Context, id string) (*loadDevice, error) {
	d := &loadDevice{id: id}
	var onDownlink func(*device.Reply, error)
	if l.o.expectReplies {
		d.sent = map[string]time.Time{}
		onDownlink = func(r *device.Reply, err error) { l.reply(d, r, err) }
	}
	// Without --expect-replies the device only publishes.
	var err error
	if d.dev, err = l.f.device(ctx, id, l.f.secrets[id], true, onDownlink); err != nil {
		return nil, fmt.Errorf("connect %s: %w", id, err)
	}
	return d, nil
}

func (l *load) disconnect() {
	var wg sync.WaitGroup
	for _, d := range l.dev {
		if d == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); d.dev.Close() }()
	}
	wg.Wait()
}

// publish sends d's messages, keeping at most --window unacknowledged.
func (l *load) publish(ctx context.Context, d *loadDevice, start time.Time) {
	window := make([]*device.Pending, 0, l.o.window)
	payload := make([]byte, 0, 64)
	for seq := 1; seq <= l.o.messages; seq++ {
		if !l.pace(ctx, start) {
			break
		}
		now := time.Now()
		payload = fmt.Appendf(payload[:0], `{"seq":%d,"sent_ns":%d}`, seq, now.UnixNano())
		m := d.dev.Sign(now, payload)
		if d.sent != nil {
			d.mu.Lock()
			d.sent[m.ID] = now
			d.mu.Unlock()
		}
		window = append(window, d.dev.Send(m))
		l.published.Add(1)
		if len(window) == l.o.window {
			l.settle(ctx, d, window[0])
			window = window[1:]
		}
	}
	for _, p := range window {
		l.settle(ctx, d, p)
	}
}

// pace waits for the next slot of --rate; it reports false when ctx ends.
func (l *load) pace(ctx context.Context, start time.Time) bool {
	if ctx.Err() != nil {
		return false
	}
	if l.o.rate <= 0 {
		return true
	}
	n := l.next.Add(1) - 1
	due := start.Add(time.Duration(float64(n) * float64(time.Second) / l.o.rate))
	if wait := time.Until(due); wait > 0 {
		return sleepCtx(ctx, wait)
	}
	return true
}

// settle waits for one PUBACK and counts it.
func (l *load) settle(ctx context.Context, d *loadDevice, p *device.Pending) {
	wctx, cancel := context.WithTimeout(ctx, l.o.publishTimeout)
	err := p.Wait(wctx)
	cancel()
	if err != nil {
		if l.errs.Add(1) == 1 {
			msg := d.id + ": " + err.Error()
			l.firstErr.Store(&msg)
		}
		if d.sent != nil {
			d.mu.Lock()
			delete(d.sent, p.ID)
			d.mu.Unlock()
		}
		return
	}
	l.acked.Add(1)
	if l.record != nil {
		l.recMu.Lock()
		fmt.Fprintf(l.record, "%s %s\n", d.id, p.ID)
		l.recMu.Unlock()
	}
}

// reply counts one downlink of d, as pkg/device parsed and verified it
// (err != nil: it did not verify). It runs on Paho's goroutines.
func (l *load) reply(d *loadDevice, r *device.Reply, err error) {
	verified := err == nil
	d.mu.Lock()
	sent, ok := d.sent[r.InReplyTo]
	if ok && verified {
		delete(d.sent, r.InReplyTo)
	}
	d.mu.Unlock()

	l.rmu.Lock()
	defer l.rmu.Unlock()
	l.replies.Received++
	switch {
	case !verified:
		l.replies.BadSignature++
		return
	case !ok:
		l.replies.Unmatched++
		return
	case r.Reason != "":
		l.replies.Rejected[r.Reason]++
	case r.Status >= 200 && r.Status < 300:
		l.replies.OK++
	default:
		l.replies.OtherStatus++
	}
	l.matched++
	l.latencies = append(l.latencies, r.ReceivedAt.Sub(sent))
}

// awaitReplies waits until every acknowledged message has its reply, or
// --reply-timeout, and summarizes the replies.
func (l *load) awaitReplies(ctx context.Context, acked int64) *replySummary {
	start := time.Now()
	deadline := start.Add(l.o.replyTimeout)
	for {
		l.rmu.Lock()
		done := l.matched >= acked
		l.rmu.Unlock()
		if done || time.Now().After(deadline) || !sleepCtx(ctx, 20*time.Millisecond) {
			break
		}
	}
	l.rmu.Lock()
	defer l.rmu.Unlock()
	s := l.replies
	s.Rejected = make(map[string]int64, len(l.replies.Rejected))
	for k, v := range l.replies.Rejected {
		s.Rejected[k] = v
	}
	s.Missing = max(0, acked-l.matched)
	s.WaitSeconds = time.Since(start).Seconds()
	p := percentiles(l.latencies, 50, 90, 99, 100)
	s.LatencyMS = map[string]float64{"p50": p[0], "p90": p[1], "p99": p[2], "max": p[3]}
	return &s
}

func printLoad(w io.Writer, s loadSummary) error {
	rate := "unpaced"
	if s.Rate > 0 {
		rate = fmt.Sprintf("%g msg/s", s.Rate)
	}
	b := fmt.Appendf(nil, "load: %d devices x %d messages = %d planned, rate %s, window %d\n",
		s.Devices, s.MessagesPerDevice, s.Planned, rate, s.Window)
	b = fmt.Appendf(b, "connected %d devices in %.2fs\n", s.Connections, s.ConnectSeconds)
	b = fmt.Appendf(b, "published %d, acknowledged %d, errors %d in %.2fs: %.0f msg/s\n",
		s.Published, s.Acked, s.PublishErrors, s.DurationSeconds, s.MsgPerSecond)
	if s.FirstError != "" {
		b = fmt.Appendf(b, "first error: %s\n", s.FirstError)
	}
	if r := s.Replies; r != nil {
		var rejected int64
		reasons := make([]string, 0, len(r.Rejected))
		for reason, n := range r.Rejected {
			rejected += n
			reasons = append(reasons, fmt.Sprintf("%s %d", reason, n))
		}
		sort.Strings(reasons)
		why := ""
		if len(reasons) > 0 {
			why = ": " + strings.Join(reasons, ", ")
		}
		b = fmt.Appendf(b, "replies: %d received (ok %d, other status %d, rejected %d%s, bad signature %d, unmatched %d), missing %d\n",
			r.Received, r.OK, r.OtherStatus, rejected, why, r.BadSignature, r.Unmatched, r.Missing)
		b = fmt.Appendf(b, "round trip: p50 %.1fms p90 %.1fms p99 %.1fms max %.1fms\n",
			r.LatencyMS["p50"], r.LatencyMS["p90"], r.LatencyMS["p99"], r.LatencyMS["max"])
	}
	if s.Interrupted {
		b = append(b, "interrupted\n"...)
	}
	_, err := w.Write(b)
	return err
}
