package sim

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/pkg/device"
)

// LoadOptions configure Load (the flags of "iotgw sim load").
type LoadOptions struct {
	// Messages is the number of messages per device.
	Messages int
	// Rate is the total paced rate over all devices in msg/s (0: as fast
	// as the window allows).
	Rate float64
	// Window bounds the PUBLISHes awaiting their PUBACK per connection.
	Window int
	// DialParallel is the number of connections set up at once.
	DialParallel int
	// PublishTimeout is the longest wait for one PUBACK.
	PublishTimeout time.Duration
	// ExpectReplies subscribes every device to its replies, verifies and
	// counts them.
	ExpectReplies bool
	// ReplyTimeout is, with ExpectReplies, the longest wait for the last
	// replies.
	ReplyTimeout time.Duration
	// Record, when set, is a file that gets "<device_id> <message_id>" per
	// acknowledged message.
	Record string
	// JSON prints the summary as one JSON object.
	JSON bool
}

// LoadSummary is the result of a load run; LoadOptions.JSON prints it as
// is, and test/perf reads it.
type LoadSummary struct {
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
	Replies           *ReplySummary `json:"replies,omitempty"`
}

// ReplySummary counts the replies of a load run (LoadOptions.ExpectReplies).
type ReplySummary struct {
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
	so  *Options
	o   LoadOptions
	f   *fleet
	dev []*loadDevice

	published, acked, errs atomic.Int64
	firstErr               atomic.Pointer[string]
	next                   atomic.Int64 // pacing slot

	rmu       sync.Mutex // guards the reply counters below
	replies   ReplySummary
	matched   int64
	latencies []time.Duration

	record *bufio.Writer
	recMu  sync.Mutex
}

// Load connects every device of ids with its own certificate and
// connection, then each publishes o.Messages signed QoS 1 messages with
// the payload {"seq":<1..M>,"sent_ns":<Unix nanoseconds at send>}. It
// prints a LoadSummary to out and returns an error wrapping ErrFailed
// when a publish failed or, with o.ExpectReplies, a reply was missing or
// failed verification.
func Load(ctx context.Context, so *Options, o LoadOptions, ids []string, out io.Writer) error {
	f, err := openFleet(so, ids)
	if err != nil {
		return err
	}
	l := &load{so: so, o: o, f: f, replies: ReplySummary{Rejected: map[string]int64{}}}
	if o.Record != "" {
		rf, err := os.Create(o.Record)
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
	s := LoadSummary{Devices: len(ids), Connections: len(ids), MessagesPerDevice: o.Messages, Planned: len(ids) * o.Messages,
		Rate: o.Rate, Window: o.Window, ConnectSeconds: time.Since(t0).Seconds()}

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
	if o.ExpectReplies {
		s.Replies = l.awaitReplies(ctx, s.Acked)
	}
	s.Interrupted = ctx.Err() != nil
	if l.record != nil {
		if err := l.record.Flush(); err != nil {
			return fmt.Errorf("record: %w", err)
		}
	}
	if o.JSON {
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
		return fmt.Errorf("%w: %d publishes failed (first: %s)", ErrFailed, s.PublishErrors, s.FirstError)
	case s.Replies != nil && (s.Replies.Missing > 0 || s.Replies.BadSignature > 0):
		return fmt.Errorf("%w: %d replies missing, %d failed verification", ErrFailed, s.Replies.Missing, s.Replies.BadSignature)
	}
	return nil
}

// connect connects every device, --dial-parallel at a time.
func (l *load) connect(ctx context.Context, ids []string) error {
	l.dev = make([]*loadDevice, len(ids))
	sem := make(chan struct{}, l.o.DialParallel)
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
	if l.o.ExpectReplies {
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
	window := make([]*device.Pending, 0, l.o.Window)
	payload := make([]byte, 0, 64)
	for seq := 1; seq <= l.o.Messages; seq++ {
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
		if len(window) == l.o.Window {
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
	if l.o.Rate <= 0 {
		return true
	}
	n := l.next.Add(1) - 1
	due := start.Add(time.Duration(float64(n) * float64(time.Second) / l.o.Rate))
	if wait := time.Until(due); wait > 0 {
		return sleepCtx(ctx, wait)
	}
	return true
}

// settle waits for one PUBACK and counts it.
func (l *load) settle(ctx context.Context, d *loadDevice, p *device.Pending) {
	wctx, cancel := context.WithTimeout(ctx, l.o.PublishTimeout)
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
func (l *load) awaitReplies(ctx context.Context, acked int64) *ReplySummary {
	start := time.Now()
	deadline := start.Add(l.o.ReplyTimeout)
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

func printLoad(w io.Writer, s LoadSummary) error {
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
