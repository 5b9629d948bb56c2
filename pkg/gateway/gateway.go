package gateway

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/downlink"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/internal/tick"
	"github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/storage"
	"github.com/iotgw/iotgw/pkg/validate"
)

// outboxStore is what the gateway needs of the engine's outbox besides
// the rows it claims (lease.Store): the Writer's commits, the replay ids
// to reload and prune, the freshness window, payloads read back, and the
// statistics.
type outboxStore interface {
	outbox.Committer
	Seen(ctx context.Context, now time.Time, window time.Duration, fn func(deviceID string, id [16]byte, expires time.Time) error) error
	SeenHorizon(ctx context.Context) (time.Time, error)
	PruneSeen(ctx context.Context, now time.Time, window time.Duration) (int64, error)
	FreshnessWindow(ctx context.Context, skew time.Duration) error
	Payload(ctx context.Context, seq int64) ([]byte, error)
	Stats(ctx context.Context) (outbox.Stats, error)
}

// Gateway is a running iotgw serve.
type Gateway struct {
	cfg Config
	log *zap.Logger
	now func() time.Time

	reg        *registry.Registry
	keys       *registry.Cache
	replay     *replay.Memory
	inflight   *inflightReplay
	validator  *validate.Validator
	engine     *storage.Engine
	store      outboxStore
	forwarder  *lease.Forwarder // every row is claimed from the engine under a lease
	writer     *outbox.Writer
	dispatcher *forward.Dispatcher
	mqtt       *mqttio.Client
	metrics    *metrics
	abuse      *abuse // rate limits, notice limits, quarantine, audit trail
	times      *timeRequests

	downlink *downlink.Signer // signs replies and notices with the key the device uses
	pendingQ *deviceQuota     // outbox rows per device (outbox.max_pending_per_device)

	seed     maphash.Seed
	queues   []chan *mqttio.Message
	stopping atomic.Bool
	// Rate limits for warnings that a burst could repeat per message.
	queueFullLog, replyErrLog logEvery
	commitErr                 atomic.Pointer[string]
	staleFinish               atomic.Int64
	http                      *http.Server
	httpLn                    net.Listener
}

// New opens the registry and the outbox, reloads the replay window and the
// pending rows, and prepares every stage. It fails with one clear error on
// bad config or unreadable files; a broker that is down is not an error
// (Run retries it). Each component names itself in log (key "component").
func New(ctx context.Context, cfg Config, log *zap.Logger, now func() time.Time) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base := log
	log = base.With(zap.String("component", "gateway"))
	g := &Gateway{cfg: cfg, log: log, now: now, seed: maphash.MakeSeed()}
	if w := cfg.Storage.PlaintextWarning(); w != "" { // before connecting: a failed start still shows it
		log.Warn(w)
	}
	kek, prevKEK, err := cfg.Security.LoadKEKs()
	if err != nil {
		return nil, err
	}
	g.engine, err = storage.Open(ctx, cfg.Storage, cfg.Outbox, cfg.Registry.Path, registry.WithKEK(kek), registry.WithClock(g.now), registry.WithPreviousKEK(prevKEK))
	if err != nil {
		g.close()
		return nil, err
	}
	g.reg = g.engine.Registry
	if kek == nil && g.reg.Sealed() {
		g.close()
		return nil, fmt.Errorf("registry %s: %w", cfg.Storage.Describe(cfg.Registry.Path), registry.ErrSealed)
	}
	if kek == nil {
		log.Warn(registry.ErrNoKEK.Error())
	}
	if g.keys, err = registry.NewCache(ctx, g.reg); err != nil {
		g.close()
		return nil, err
	}
	if err := g.engine.OpenOutbox(ctx); err != nil { // after the registry, so a bad one is reported first
		g.close()
		return nil, err
	}
	g.store = g.engine.Outbox
	// Every gateway sharing the database prunes replay ids by one window,
	// the fleet's: one with another skew refuses to start.
	if err := g.store.FreshnessWindow(ctx, cfg.Validation.MaxClockSkew); err != nil {
		g.close()
		return nil, err
	}
	g.replay = replay.New(cfg.Replay)
	loaded := 0
	// Each id is kept until the later of its stored expiry and its
	// timestamp + the skew in force now (a raised skew must not reopen a
	// replay), and restored past its device's quota (it was accepted).
	start := now()
	err = g.store.Seen(ctx, start, cfg.Validation.MaxClockSkew, func(dev string, id [16]byte, exp time.Time) error {
		loaded++
		return g.replay.Restore(dev, id, exp, start)
	})
	if err != nil {
		g.close()
		return nil, fmt.Errorf("reload replay window: %w", err)
	}
	// Ids of messages timestamped before the horizon may have been pruned
	// by an earlier run: with the skew raised or the clock stepped back,
	// a copy of one would look fresh and new. Refuse those (as replays).
	horizon, err := g.store.SeenHorizon(ctx)
	if err != nil {
		g.close()
		return nil, err
	}
	g.replay.SetHorizon(horizon.Add(cfg.Validation.MaxClockSkew))
	g.inflight = newInflightReplay(g.replay)
	if g.validator, err = validate.New(cfg.Validation, g.keys, g.inflight, now); err != nil {
		g.close()
		return nil, err
	}
	g.downlink = downlink.New(g.keys, now)
	if err = g.openAbuse(ctx); err != nil {
		g.close()
		return nil, err
	}
	// Rows left from an earlier run (this gateway's alone: on a shared
	// engine every gateway claims any row), without payloads: the
	// dispatcher reads each back when it posts it, so a large backlog need
	// not fit in memory. A shared engine enforces the per-device quota
	// fleet-wide, in its commit.
	pending, err := g.engine.Pending(ctx)
	if err != nil {
		g.close()
		return nil, err
	}
	quota := cfg.Outbox.MaxPendingPerDevice
	if !g.engine.Local {
		quota = 0
	}
	g.pendingQ = newDeviceQuota(quota)
	for _, r := range pending {
		g.pendingQ.force(r.DeviceID)
	}
	var lastSeq int64
	if len(pending) > 0 {
		lastSeq = pending[len(pending)-1].Seq
	}
	g.writer = outbox.NewWriter(g.store, cfg.Outbox, lastSeq, len(pending), outbox.WriterHooks{
		Committed: g.committed,
		Foreign:   g.foreign,
		Failed:    g.commitFailed,
		Refused:   g.refused,
		HandOff:   !g.engine.Local,
	})
	// Every row is forwarded through one state machine, claimed under a
	// lease from the engine (in process on SQLite, from the database when
	// shared), pending rows first.
	g.forwarder = g.newLeaseForwarder(g.engine.Leases(g.writer, pending, cfg.Backend.MaxPayloadMemory, now))
	poster, err := forward.NewClient(cfg.Backend)
	if err != nil {
		g.close()
		return nil, err
	}
	for _, w := range []string{cfg.Backend.PlaintextWarning(), cfg.Backend.SchemeWarning()} {
		if w != "" {
			log.Warn(w)
		}
	}
	breaker := forward.NewBreaker(cfg.Backend.BreakerThreshold, cfg.Backend.BreakerCooldown, now)
	breaker.OnChange(func(open bool) {
		if open {
			log.Warn("backend circuit breaker open: forwarding paused, messages wait in the outbox",
				zap.Int("failures", cfg.Backend.BreakerThreshold), zap.Duration("cooldown", cfg.Backend.BreakerCooldown))
			return
		}
		log.Info("backend circuit breaker closed: the backend answers again, forwarding resumed")
	})
	hooks := forward.Hooks{Settled: g.settled, Retry: g.retrying, Load: g.loadPayload, Admit: g.forwarder.Admit}
	g.dispatcher = forward.NewDispatcher(cfg.Backend, poster, breaker,
		forward.ExponentialJitter(cfg.Backend.BackoffInitial, cfg.Backend.BackoffMax), now, hooks)
	g.metrics = newMetrics(g)
	g.abuse.register(g.metrics.reg, now)
	g.times = newTimeRequests(cfg.Limits.NoticeInterval, g.metrics.reg)
	g.queues = make([]chan *mqttio.Message, cfg.Pipeline.Workers)
	for i := range g.queues {
		g.queues[i] = make(chan *mqttio.Message, cfg.Pipeline.QueueDepth)
	}
	if g.mqtt, err = mqttio.New(cfg.MQTT, g.receive, base.With(zap.String("component", "mqtt")), envelope.TimeSubscription); err != nil {
		g.close()
		return nil, err
	}
	if cfg.HTTP.Listen != "" {
		if g.httpLn, err = net.Listen("tcp", cfg.HTTP.Listen); err != nil {
			g.close()
			return nil, fmt.Errorf("http.listen: %w", err)
		}
	}
	// "ready" waits for the broker: /readyz says 503 until then.
	var ready sync.Once
	g.mqtt.OnConnect(func() {
		ready.Do(func() { log.Info("ready", zap.String("broker", cfg.MQTT.Broker), zap.Int("devices", g.keys.Len())) })
	})
	log.Info("gateway started", zap.Int("devices", g.keys.Len()), zap.Int("replay_ids_loaded", loaded),
		zap.Int("outbox_pending", len(pending)))
	return g, nil
}

// HTTPAddr returns the operations endpoint's address, or "".
func (g *Gateway) HTTPAddr() string {
	if g.httpLn == nil {
		return ""
	}
	return g.httpLn.Addr().String()
}

// loadPayload reads a row's payload back from the outbox for the
// dispatcher (forward.Hooks.Load).
func (g *Gateway) loadPayload(ctx context.Context, j *forward.Job) ([]byte, error) {
	p, err := g.store.Payload(ctx, j.Seq)
	if errors.Is(err, outbox.ErrNoRow) {
		return nil, fmt.Errorf("%w: %w", forward.ErrPayloadGone, err)
	}
	return p, err
}

// awaitReplies holds forwarding back until the reply connection is up,
// for at most mqtt.connect_timeout: rows left in the outbox are posted at
// once, and their replies would otherwise be refused by a reply
// connection not yet connected, and dropped. A broker still down after
// that does not stop forwarding to the backend (its replies are then
// dropped and counted). It reports false if ctx ended first.
func (g *Gateway) awaitReplies(ctx context.Context) bool {
	t := time.NewTimer(g.cfg.MQTT.ConnectTimeout)
	defer t.Stop()
	select {
	case <-g.mqtt.RepliesUp():
	case <-t.C:
		g.log.Warn("reply connection not up yet; forwarding anyway: replies to rows posted until it is up are dropped (iotgw_reply_publish_errors_total)",
			zap.Duration("waited", g.cfg.MQTT.ConnectTimeout))
	case <-ctx.Done():
		return false
	}
	return true
}

// Run serves until ctx is cancelled, then drains within ShutdownGrace.
func (g *Gateway) Run(ctx context.Context) error {
	defer g.close()
	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	var bgWG sync.WaitGroup
	goBG := func(f func()) {
		bgWG.Add(1)
		go func() { defer bgWG.Done(); f() }()
	}
	if g.httpLn != nil {
		g.http = &http.Server{Handler: g.routes(), ReadHeaderTimeout: 5 * time.Second}
		goBG(func() {
			if err := g.http.Serve(g.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				g.log.Error("http server stopped", zap.Error(err))
			}
		})
	}
	goBG(func() {
		g.keys.Run(bg, g.cfg.Registry.Refresh, func(err error) {
			g.log.Error(registryRefreshFailed(err), zap.Error(err))
		})
	})
	goBG(func() { g.prune(bg) })
	goBG(func() { g.reloadKEKOnHUP(bg) })
	goBG(func() {
		g.engine.Listen(bg, g.forwarder.Kick, g.keys.Kick, func(err error) {
			g.log.Warn("storage notifications lost; polling every second until they return", zap.Error(err))
		})
	})
	fwdCtx, stopFwd := context.WithCancel(context.Background())
	fwdDone := make(chan struct{})
	go func() { g.forwarder.Run(fwdCtx); close(fwdDone) }()
	goBG(func() { g.abuse.writer.Run(bg) }) // flushes the rest once bg is cancelled, after the workers stopped

	// Stages, in the order they are stopped.
	workCtx, stopWork := context.WithCancel(context.Background())
	var workers sync.WaitGroup
	for i := range g.queues {
		workers.Add(1)
		go func() { defer workers.Done(); g.work(workCtx, g.queues[i]) }()
	}
	writerCtx, stopWriter := context.WithCancel(context.Background())
	writerDone := make(chan struct{})
	go func() { g.writer.Run(writerCtx); close(writerDone) }()
	dispCtx, stopDisp := context.WithCancel(context.Background())
	dispDone := make(chan struct{})
	go func() {
		defer close(dispDone)
		if g.awaitReplies(dispCtx) {
			g.dispatcher.Run(dispCtx)
		}
	}()

	if err := g.mqtt.Connect(ctx); err != nil && ctx.Err() == nil {
		g.log.Error("broker connect stopped", zap.Error(err))
	}
	<-ctx.Done()

	// Shutdown: stop taking messages (those not yet validated stay unacked
	// and the broker redelivers them), commit and ack what was accepted,
	// let in-flight POSTs finish within the grace, leave the rest stored.
	g.log.Info("shutting down", zap.Duration("grace", g.cfg.ShutdownGrace))
	deadline := time.Now().Add(g.cfg.ShutdownGrace)
	g.stopping.Store(true)
	stopWork()
	workers.Wait()
	stopDisp()
	select {
	case <-dispDone:
	case <-time.After(time.Until(deadline)):
		g.log.Warn("grace period over; aborting in-flight POSTs (they stay in the outbox)")
		g.dispatcher.Abort()
		<-dispDone
	}
	stopFwd()
	<-fwdDone
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	g.forwarder.Stop(sctx) // finishes what settled, gives the leases back
	cancel()
	g.writer.Close() // commits what was accepted (and acks it) and the last deletions
	select {
	case <-writerDone:
	case <-time.After(max(time.Until(deadline), time.Second)):
		stopWriter()
		<-writerDone
	}
	g.mqtt.Disconnect(250 * time.Millisecond)
	if g.http != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		g.http.Shutdown(sctx) //nolint:errcheck // best effort at exit
		cancel()
	}
	stopBG()
	bgWG.Wait()
	stopWriter()
	g.log.Info("stopped", zap.Int("outbox_pending", g.dispatcher.Pending()))
	return nil
}

func (g *Gateway) close() {
	if g.mqtt == nil && g.httpLn != nil {
		g.httpLn.Close()
	}
	if g.keys != nil {
		g.keys.Close()
	}
	g.abuse.close()
	if g.engine != nil {
		g.engine.Close()
	}
}

// receive is the Paho handler: it only hands the message (an uplink, or a
// time request) to its device's worker. It blocks only when that worker's
// queue is full; that is backpressure, not loss: Paho stops reading, TCP
// fills and the broker holds the messages. (Mosquitto's max_inflight_messages should keep the
// unacked total below pipeline.queue_depth, but under load we have seen
// full queues anyway, so the wait is counted and logged, rate-limited.)
func (g *Gateway) receive(m *mqttio.Message) {
	if g.stopping.Load() {
		return // unacked: redelivered after restart
	}
	dev := envelope.DataTopicDevice(m.Topic)
	if t := envelope.TimeTopicDevice(m.Topic); t != "" {
		dev = t // a time request, not an uplink: not counted as received
	} else {
		g.metrics.received.Inc()
	}
	q := g.queues[maphash.String(g.seed, dev)%uint64(len(g.queues))]
	select {
	case q <- m:
	default:
		// Backpressure, not an error: counted always, logged at most every
		// warnEvery so a burst cannot flood the log.
		g.metrics.queueFull.Inc()
		if g.queueFullLog.allow() {
			g.log.Warn("validation queue full; the MQTT receive path waits (see iotgw_validation_queue_full_total)", zap.String("device_id", dev))
		}
		q <- m
	}
}

// Backlog is how many received messages wait for a validation worker or
// for the outbox writer: near 0 while the gateway keeps up, hundreds when
// it does not (the broker keeps up to max_inflight_messages in flight).
// Cheap enough to ask once a second (procs.Run does).
func (g *Gateway) Backlog() int {
	n := g.writer.Queued()
	for _, q := range g.queues {
		n += len(q)
	}
	return n
}

// logEvery lets a repeated warning through at most once per
// warnEvery; the metric beside it counts every occurrence.
type logEvery struct{ last atomic.Int64 } // Unix ns of the last one let through

const warnEvery = 5 * time.Second

func (l *logEvery) allow() bool {
	now := time.Now().UnixNano()
	last := l.last.Load()
	return now-last >= int64(warnEvery) && l.last.CompareAndSwap(last, now)
}

func (g *Gateway) work(ctx context.Context, q chan *mqttio.Message) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-q:
			if isTimeRequest(m) {
				g.timeRequest(ctx, m)
				continue
			}
			g.handle(ctx, m)
		}
	}
}

// handle validates one message and either rejects it (ack now) or appends
// it to the outbox (ack at commit). Infrastructure errors are retried with
// the message unacked.
func (g *Gateway) handle(ctx context.Context, m *mqttio.Message) {
	dev := envelope.DataTopicDevice(m.Topic)
	delay := 100 * time.Millisecond
	var res validate.Result
	for {
		var err error
		start := time.Now()
		res, err = g.validator.Check(ctx, dev, m.Payload)
		g.metrics.validation.Observe(time.Since(start).Seconds())
		if err == nil {
			break
		}
		g.metrics.infraErrors.WithLabelValues("validate").Inc()
		g.log.Error("cannot validate; will retry, message not acked", zap.String("device_id", dev), zap.Duration("retry_in", delay), zap.Error(err))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return
		}
		delay = min(delay*2, 5*time.Second)
	}
	env := &res.Envelope
	if res.Verified {
		g.downlink.Used(env.DeviceID, res.KeyID, res.NewestKeyID)
	}
	if rej := res.Rejection; rej != nil {
		if rej.Reason == validate.Replay && g.inflight.addAck(env.DeviceID, env.UUID(), m.Ack) {
			g.metrics.redelivered.Inc()
			return // our own redelivery: acked when the original commits
		}
		g.reject(ctx, m.Ack, dev, env, rej)
		return
	}
	rec := &outbox.Record{DeviceID: env.DeviceID, MessageID: string(env.MessageID), Timestamp: string(env.TimestampRaw),
		ID: env.UUID(), Payload: env.Payload, ReceivedAt: g.now(), Expires: res.Expires, KeyID: res.KeyID}
	if env.IsCounter() {
		// Counter mode: the outbox commit judges replays (the device's
		// bound); in flight, copies are matched by their counter.
		rec.Timestamp, rec.ID = outbox.CounterTimestamp(env.CounterRaw), outbox.CounterID(env.Counter)
		if !g.inflight.begin(env.DeviceID, rec.ID, m.Ack) {
			g.metrics.redelivered.Inc()
			return // our own redelivery: acked when the original commits
		}
	}
	if !g.hold(rec, m.Ack) {
		// The device holds its share of the outbox: refuse this message
		// (acked, counted, answered), forget its id so a resend is
		// accepted once the device's backlog drains.
		acks := g.undo(rec, undoForget)
		g.reject(ctx, ackAll(m.Ack, acks), dev, env, &validate.Rejection{Reason: validate.QuotaExceeded,
			Detail: "pending outbox rows of this device at outbox.max_pending_per_device"})
		return
	}
	if err := g.writer.Append(ctx, rec); err != nil {
		// Shutting down while the outbox is full: forget the id so the
		// redelivery after restart is accepted; the message stays unacked.
		g.undo(rec, undoForget|undoSlot)
	}
}

func (g *Gateway) reject(ctx context.Context, ack func(), dev string, env *envelope.Envelope, rej *validate.Rejection) {
	g.metrics.reject(rej.Reason)
	if rej.Reason == validate.UnknownDevice || rej.Reason == validate.KeyUnavailable {
		g.downlink.Forget(dev) // a removed device's downlink key leaves memory, and one that no longer opens too
	}
	fields := []zap.Field{zap.String("device_id", dev), zap.String("reason", string(rej.Reason))}
	if env.MessageID != nil {
		fields = append(fields, zap.ByteString("message_id", env.MessageID))
	}
	if rej.Detail != "" {
		fields = append(fields, zap.String("detail", rej.Detail))
	}
	notice := g.rejected(dev, env, rej)
	if !notice {
		// A flood (of any reason: malformed and identity_mismatch come
		// before the rate limiter): logged at info once a second per
		// device and reason, counted always.
		g.log.Debug("rejected", fields...)
	} else {
		g.log.Info("rejected", fields...)
	}
	if g.cfg.Validation.RejectNotices && rej.Reason != validate.UnknownDevice && rej.Reason != validate.KeyUnavailable && dev != "" { // no key to sign with
		if notice {
			g.notify(ctx, dev, envelope.RejectionPayload(env.MessageID, string(rej.Reason)))
		} else {
			g.abuse.suppressed.WithLabelValues(string(rej.Reason)).Inc() // at most one per second and reason: no amplifier
		}
	}
	ack()
}

// notify signs payload for dev and publishes it to device/<dev>/response.
// A device that is not registered gets nothing (there is no key).
func (g *Gateway) notify(ctx context.Context, dev string, payload []byte) {
	e := envelope.Envelope{DeviceID: dev, Timestamp: g.now().Unix(), MessageID: envelope.NewMessageID(), Payload: payload}
	e.TimestampRaw = strconv.AppendInt(nil, e.Timestamp, 10)
	if err := g.downlink.Sign(ctx, &e); err != nil {
		if !errors.Is(err, validate.ErrUnknownDevice) {
			g.log.Warn("cannot sign reply", zap.String("device_id", dev), zap.Error(err))
		}
		return
	}
	if err := g.mqtt.Publish(envelope.ResponseTopic(dev), envelope.AppendJSON(make([]byte, 0, 256+len(payload)), &e)); err != nil {
		g.metrics.replyErrors.Inc()
		if g.replyErrLog.allow() {
			g.log.Warn("reply not published (see iotgw_reply_publish_errors_total)", zap.String("device_id", dev), zap.Error(err))
		}
	}
}

// committed runs on the Writer's goroutine once a batch is durable.
func (g *Gateway) committed(batch []*outbox.Record) {
	g.metrics.commitBatch.Observe(float64(len(batch)))
	g.metrics.accept(len(batch))
	if p := g.commitErr.Load(); p != nil {
		g.commitErr.Store(nil)
		g.log.Info("outbox writable again")
	}
	debug := g.log.Core().Enabled(zap.DebugLevel)
	for _, r := range batch {
		if debug {
			g.log.Debug("accepted", zap.String("device_id", r.DeviceID), zap.String("message_id", r.MessageID))
		}
		for _, ack := range g.committedAcks(r) {
			ack()
		}
	}
	g.forwarder.Kick() // the engine has them: claim
}

// refused runs on the Writer's goroutine for records the database
// refused at commit: a replay another gateway committed first, a
// counter-mode message at or below its device's bound (any engine), or a
// device at its fleet-wide quota. Each is acked and answered like any rejection.
func (g *Gateway) refused(rs []outbox.Refusal) {
	ctx := context.Background()
	for _, r := range rs {
		rej := &validate.Rejection{Reason: validate.Replay, Detail: "committed first through another gateway"}
		how := undoSlot // a replay's id stays: it was accepted once
		switch {
		case r.Quota:
			rej = &validate.Rejection{Reason: validate.QuotaExceeded, Detail: "pending outbox rows of this device at outbox.max_pending_per_device (fleet-wide)"}
			how |= undoForget
		case r.Old:
			rej.Detail = "timestamped at or below the fleet's replay horizon (its id may have been pruned)"
		case r.Counter:
			rej.Detail = "counter at or below the highest this device had accepted"
		}
		acks := g.undo(r.Rec, how)
		env := &envelope.Envelope{DeviceID: r.Rec.DeviceID, MessageID: []byte(r.Rec.MessageID)}
		g.reject(ctx, ackAll(nil, acks), r.Rec.DeviceID, env, rej)
	}
}

// foreign runs on the Writer's goroutine for rows another process added
// to the outbox (the CLI's dead-letter retry): they count against the
// bounds, and the engine made them claimable.
func (g *Gateway) foreign(rows []*outbox.Record) {
	g.writer.Reserve(len(rows))
	for _, r := range rows {
		g.pendingQ.force(r.DeviceID)
		g.log.Info("picked up a retried dead letter", zap.String("device_id", r.DeviceID), zap.String("message_id", r.MessageID))
	}
	g.forwarder.Kick()
}

func (g *Gateway) commitFailed(err error, n int, delay time.Duration) {
	g.metrics.infraErrors.WithLabelValues("outbox_commit").Inc()
	msg := err.Error()
	g.commitErr.Store(&msg)
	g.log.Error("OUTBOX COMMIT FAILED: not acking; messages stay with the broker until it succeeds",
		zap.Int("batch", n), zap.Duration("retry_in", delay), zap.Error(err))
}

func (g *Gateway) retrying(j *forward.Job, err error, delay time.Duration) {
	if errors.Is(err, lease.ErrLeaseUnconfirmed) { // storage, not the backend: the lease forwarder reports it (/readyz, log, metric)
		g.log.Debug("not posting: lease unconfirmed", zap.String("device_id", j.DeviceID), zap.Duration("retry_in", delay))
		return
	}
	g.metrics.forwarded.WithLabelValues("retry").Inc()
	g.metrics.backendAnswer(0, err)
	g.log.Warn("forward failed; will retry", zap.String("device_id", j.DeviceID), zap.String("message_id", j.MessageID),
		zap.Int("attempt", j.Attempts), zap.Duration("retry_in", delay), zap.Error(err))
}

// settled runs on a dispatcher worker once a Job is done, final or dead.
func (g *Gateway) settled(j *forward.Job, o forward.Outcome) {
	g.pendingQ.release(j.DeviceID)
	if o.Dead {
		g.metrics.forwarded.WithLabelValues("dead").Inc()
		g.metrics.backendAnswer(0, o.Err)
		g.log.Error("forward gave up; moved to the dead-letter table", zap.String("device_id", j.DeviceID),
			zap.String("message_id", j.MessageID), zap.Int("attempts", j.Attempts), zap.Error(o.Err))
		g.forwarder.Settled(j, &lease.Dead{Attempts: j.Attempts, LastError: o.Err.Error(), At: g.now()}) // buried under its lease
		return
	}
	result := "ok"
	if o.Response.Status >= 300 {
		result = "final"
	}
	g.metrics.forwarded.WithLabelValues(result).Inc()
	g.metrics.backendAnswer(o.Response.Status, nil)
	g.metrics.latency.Observe(g.now().Sub(j.ReceivedAt).Seconds())
	g.log.Debug("forwarded", zap.String("device_id", j.DeviceID), zap.String("message_id", j.MessageID), zap.Int("status", o.Response.Status))
	g.notify(context.Background(), j.DeviceID, envelope.ReplyPayload([]byte(j.MessageID), o.Response.Status, o.Response.Body))
	g.forwarder.Settled(j, nil)
}

// prune deletes expired replay ids from the outbox database.
func (g *Gateway) prune(ctx context.Context) {
	t, stop := tick.Aligned(g.cfg.Outbox.PruneInterval)
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := g.store.PruneSeen(ctx, g.now(), g.cfg.Validation.MaxClockSkew); err != nil && ctx.Err() == nil {
				g.log.Warn("cannot prune expired replay ids", zap.Error(err))
			}
		}
	}
}

// pendingTooOld says why /readyz is not ready when the oldest row waiting
// for the backend is older than http.ready_max_pending_age (on a shared
// engine: any gateway's row), or "".
func (g *Gateway) pendingTooOld(ctx context.Context) string {
	bound := g.cfg.HTTP.ReadyMaxPendingAge
	if bound <= 0 {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := g.store.Stats(ctx)
	if err != nil {
		return "outbox: cannot read the oldest pending row: " + err.Error()
	}
	if age := g.now().Sub(st.Oldest); !st.Oldest.IsZero() && age > bound {
		return fmt.Sprintf("outbox: oldest pending row waits %s (http.ready_max_pending_age %s): forwarding is stuck or behind", age.Round(time.Second), bound)
	}
	return ""
}

// routes serves /healthz, /readyz and /metrics.
func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n")) //nolint:errcheck
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		var problems []string
		if !g.mqtt.Connected() {
			problems = append(problems, "broker: not connected")
		}
		if g.mqtt.Flapping() {
			problems = append(problems, "broker: the connection keeps dropping right after connecting (mqtt.broker names the device listener, or another client uses mqtt.client_id)")
		}
		if g.dispatcher.BreakerOpen() {
			problems = append(problems, "backend: circuit breaker open")
		}
		if p := g.commitErr.Load(); p != nil {
			problems = append(problems, "outbox: commit failing: "+*p)
		}
		if e := g.forwarder.LastError(); e != "" {
			problems = append(problems, "storage: "+e)
		}
		if p := g.registryStale(); p != "" {
			problems = append(problems, p)
		}
		if g.writer.Occupied() >= g.cfg.Outbox.MaxPending {
			problems = append(problems, "outbox: full (backpressure)")
		}
		if p := g.pendingTooOld(r.Context()); p != "" {
			problems = append(problems, p)
		}
		if len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(strings.Join(problems, "\n") + "\n")) //nolint:errcheck
			return
		}
		w.Write([]byte("ready\n")) //nolint:errcheck
	})
	mux.Handle("/metrics", promHandler(g.metrics.reg))
	if g.cfg.HTTP.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
