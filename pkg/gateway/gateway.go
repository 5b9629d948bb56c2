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

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/storage"
	"github.com/iotgw/iotgw/pkg/validate"
)

// Gateway is a running iotgw serve.
type Gateway struct {
	cfg Config
	log *zap.Logger
	now func() time.Time

	reg        *registry.Registry
	regClose   func() error
	keys       *registry.Cache
	replay     *replay.Memory
	inflight   *inflightReplay
	validator  *validate.Validator
	engine     *storage.Engine
	store      storage.Outbox
	shared     *sharedFwd // storage.engine postgres: rows claimed under leases
	writer     *outbox.Writer
	dispatcher *forward.Dispatcher
	mqtt       *mqttio.Client
	metrics    *metrics
	abuse      *abuse // rate limits, notice limits, quarantine, audit trail

	// usedKey is device id → the newest key id (int64) the device's
	// messages verified with; replies are signed with it. In memory only.
	usedKey  sync.Map
	pendingQ *deviceQuota // outbox rows per device (outbox.max_pending_per_device)

	seed     maphash.Seed
	queues   []chan *mqttio.Message
	stopping atomic.Bool
	// Rate limits for warnings that a burst could repeat per message.
	queueFullLog, replyErrLog logEvery
	commitErr                 atomic.Pointer[string]
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
	if err := g.openRegistry(ctx, kek, registry.WithPreviousKEK(prevKEK)); err != nil {
		g.close()
		return nil, err
	}
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
	if g.engine == nil { // SQLite: after the registry, so a missing one is reported first
		if g.engine, err = storage.OpenOutbox(ctx, cfg.Storage, cfg.Outbox); err != nil {
			g.close()
			return nil, err
		}
	}
	g.store = g.engine.Outbox
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
	if err = g.openAbuse(ctx); err != nil {
		g.close()
		return nil, err
	}
	// Without payloads: the dispatcher reads each back when it posts it,
	// so a large backlog need not fit in memory.
	// With a shared engine, rows are claimed (sharedFwd), not reloaded,
	// and the database enforces the per-device quota fleet-wide.
	var pending []*outbox.Record
	quota := cfg.Outbox.MaxPendingPerDevice
	if g.engine.Shared != nil {
		g.shared, quota = newSharedFwd(g, g.engine.Shared), 0
	} else if pending, err = g.store.PendingMeta(ctx); err != nil {
		g.close()
		return nil, err
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
		HandOff:   g.shared != nil,
	})
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
	hooks := forward.Hooks{Settled: g.settled, Retry: g.retrying, Load: g.loadPayload}
	if g.shared != nil {
		hooks.Admit = g.shared.admit
	}
	g.dispatcher = forward.NewDispatcher(cfg.Backend, poster, breaker,
		forward.ExponentialJitter(cfg.Backend.BackoffInitial, cfg.Backend.BackoffMax), now, hooks)
	for _, r := range pending { // forwarded first, before any new message
		g.dispatcher.Submit(job(r))
	}
	g.metrics = newMetrics(g)
	g.abuse.register(g.metrics.reg, now)
	g.queues = make([]chan *mqttio.Message, cfg.Pipeline.Workers)
	for i := range g.queues {
		g.queues[i] = make(chan *mqttio.Message, cfg.Pipeline.QueueDepth)
	}
	if g.mqtt, err = mqttio.New(cfg.MQTT, g.receive, base.With(zap.String("component", "mqtt"))); err != nil {
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

// openRegistry opens the registry: on PostgreSQL in the engine's
// database (opened here first, so registry, audit and outbox share one
// pool); on SQLite the file registry.path, which must exist: only `iotgw
// device add` creates a registry, and one created empty here (a typo in
// the path) would reject every device as unknown.
func (g *Gateway) openRegistry(ctx context.Context, kek *registry.KEK, more ...registry.Option) error {
	cfg := g.cfg
	opts := append([]registry.Option{registry.WithKEK(kek), registry.WithClock(g.now)}, more...)
	if cfg.Storage.Shared() {
		var err error
		if g.engine, err = storage.OpenOutbox(ctx, cfg.Storage, cfg.Outbox); err != nil {
			return err
		}
		g.reg, g.regClose, err = storage.RegistryOn(ctx, g.engine.PG, opts...)
		if err != nil {
			return fmt.Errorf("registry (storage.dsn): %w", err)
		}
		return nil
	}
	if err := cfg.Storage.RegistryExists(cfg.Registry.Path); err != nil { // not created empty: 0 devices would reject everything
		return fmt.Errorf("registry.path: %w", err)
	}
	r, err := registry.Open(ctx, cfg.Registry.Path, opts...)
	if err != nil {
		return fmt.Errorf("registry.path: %w", err)
	}
	g.reg, g.regClose = r, r.Close
	return nil
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

func job(r *outbox.Record) *forward.Job {
	return &forward.Job{Seq: r.Seq, Order: r.DSeq, DeviceID: r.DeviceID, MessageID: r.MessageID, Timestamp: r.Timestamp, Payload: r.Payload, ReceivedAt: r.ReceivedAt}
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
	sharedCtx, stopShared := context.WithCancel(context.Background())
	sharedDone := make(chan struct{})
	if g.shared != nil {
		goBG(func() {
			g.engine.Shared.Listen(bg, map[string]func(){g.engine.Wakeups: g.shared.kick, g.engine.RegistryChanges: g.keys.Kick}, func(err error) {
				g.log.Warn("storage notifications lost; polling every second until they return", zap.Error(err))
			})
		})
		go func() { g.shared.run(sharedCtx); close(sharedDone) }()
	} else {
		close(sharedDone)
	}
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
	stopShared()
	<-sharedDone
	if g.shared != nil {
		g.shared.stop() // deletes what settled, releases the leases
	}
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
	if g.regClose != nil {
		g.regClose() //nolint:errcheck // closing at exit
	}
	g.abuse.close()
	if g.engine != nil {
		g.engine.Close()
	}
}

// receive is the Paho handler: it only hands the message to its device's
// worker. It blocks only when that worker's queue is full; that is
// backpressure, not loss: Paho stops reading, TCP fills and the broker
// holds the messages. (Mosquitto's max_inflight_messages should keep the
// unacked total below pipeline.queue_depth, but under load we have seen
// full queues anyway, so the wait is counted and logged, rate-limited.)
func (g *Gateway) receive(m *mqttio.Message) {
	if g.stopping.Load() {
		return // unacked: redelivered after restart
	}
	g.metrics.received.Inc()
	dev := topicDevice(m.Topic)
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

// logEvery lets a repeated warning through at most once per
// warnEvery; the metric beside it counts every occurrence.
type logEvery struct{ last atomic.Int64 } // Unix ns of the last one let through

const warnEvery = 5 * time.Second

func (l *logEvery) allow() bool {
	now := time.Now().UnixNano()
	last := l.last.Load()
	return now-last >= int64(warnEvery) && l.last.CompareAndSwap(last, now)
}

// topicDevice returns <id> from device/<id>/data, or "" for another shape.
func topicDevice(topic string) string {
	rest, ok := strings.CutPrefix(topic, "device/")
	if !ok {
		return ""
	}
	id, ok := strings.CutSuffix(rest, "/data")
	if !ok || strings.Contains(id, "/") {
		return ""
	}
	return id
}

func (g *Gateway) work(ctx context.Context, q chan *mqttio.Message) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-q:
			g.handle(ctx, m)
		}
	}
}

// handle validates one message and either rejects it (ack now) or appends
// it to the outbox (ack at commit). Infrastructure errors are retried with
// the message unacked.
func (g *Gateway) handle(ctx context.Context, m *mqttio.Message) {
	dev := topicDevice(m.Topic)
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
		g.noteKey(env.DeviceID, res.KeyID, res.NewestKeyID)
	}
	if rej := res.Rejection; rej != nil {
		if rej.Reason == validate.Replay && g.inflight.addAck(env.DeviceID, env.UUID(), m.Ack) {
			g.metrics.redelivered.Inc()
			return // our own redelivery: acked when the original commits
		}
		g.reject(ctx, m.Ack, dev, env, rej)
		return
	}
	if !g.pendingQ.take(env.DeviceID) {
		// The device holds its share of the outbox: refuse this message
		// (acked, counted, answered), forget its id so a resend is
		// accepted once the device's backlog drains.
		for _, ack := range g.inflight.durable(env.DeviceID, env.UUID()) {
			ack()
		}
		g.replay.Forget(context.Background(), env.DeviceID, env.UUID()) //nolint:errcheck // memory store cannot fail
		g.reject(ctx, m.Ack, dev, env, &validate.Rejection{Reason: validate.QuotaExceeded,
			Detail: "pending outbox rows of this device at outbox.max_pending_per_device"})
		return
	}
	rec := &outbox.Record{DeviceID: env.DeviceID, MessageID: string(env.MessageID), Timestamp: string(env.TimestampRaw),
		ID: env.UUID(), Payload: env.Payload, ReceivedAt: g.now(), Expires: res.Expires}
	if !g.inflight.addAck(rec.DeviceID, rec.ID, m.Ack) {
		m.Ack() // cannot happen: Record marked it in flight
	}
	if err := g.writer.Append(ctx, rec); err != nil {
		// Shutting down while the outbox is full: forget the id so the
		// redelivery after restart is accepted; the message stays unacked.
		g.inflight.durable(rec.DeviceID, rec.ID)
		g.replay.Forget(context.Background(), rec.DeviceID, rec.ID) //nolint:errcheck // memory store cannot fail
		g.pendingQ.release(rec.DeviceID)
	}
}

func (g *Gateway) reject(ctx context.Context, ack func(), dev string, env *envelope.Envelope, rej *validate.Rejection) {
	g.metrics.reject(rej.Reason)
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

// noteKey remembers that dev's message verified with key id, keeping the
// newest: an old-key message still in flight after a rotation does not
// move replies back to the old key. newest is the largest key id dev has
// now: a remembered id above it belongs to a registration since removed
// (ids start over at 1), and is replaced.
func (g *Gateway) noteKey(dev string, id, newest int64) {
	for {
		old, loaded := g.usedKey.LoadOrStore(dev, id)
		if !loaded || old.(int64) == id || (old.(int64) > id && old.(int64) <= newest) || g.usedKey.CompareAndSwap(dev, old, id) {
			return
		}
	}
}

// replyKey returns the key id replies to dev are signed with: the newest
// the device has used since start, else 0 (its newest valid key).
func (g *Gateway) replyKey(dev string) int64 {
	if v, ok := g.usedKey.Load(dev); ok {
		return v.(int64)
	}
	return 0
}

// notify signs payload for dev and publishes it to device/<dev>/response.
// A device that is not registered gets nothing (there is no key).
func (g *Gateway) notify(ctx context.Context, dev string, payload []byte) {
	e := envelope.Envelope{DeviceID: dev, Timestamp: g.now().Unix(), MessageID: envelope.NewMessageID(), Payload: payload}
	e.TimestampRaw = strconv.AppendInt(nil, e.Timestamp, 10)
	if err := g.validator.SignFor(ctx, &e, g.replyKey(dev)); err != nil {
		if !errors.Is(err, validate.ErrUnknownDevice) {
			g.log.Warn("cannot sign reply", zap.String("device_id", dev), zap.Error(err))
		}
		return
	}
	if err := g.mqtt.Publish("device/"+dev+"/response", envelope.AppendJSON(make([]byte, 0, 256+len(payload)), &e)); err != nil {
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
		for _, ack := range g.inflight.durable(r.DeviceID, r.ID) {
			ack()
		}
		if g.shared == nil {
			g.dispatcher.Submit(job(r))
		}
	}
	if g.shared != nil {
		g.shared.kick()
	}
}

// refused runs on the Writer's goroutine for records the shared database
// refused at commit: a replay another gateway committed first, or a device
// at its fleet-wide quota. Each is acked and answered like any rejection.
func (g *Gateway) refused(rs []outbox.Refusal) {
	ctx := context.Background()
	for _, r := range rs {
		acks := g.inflight.durable(r.Rec.DeviceID, r.Rec.ID)
		rej := &validate.Rejection{Reason: validate.Replay, Detail: "committed first through another gateway"}
		if r.Quota {
			rej = &validate.Rejection{Reason: validate.QuotaExceeded, Detail: "pending outbox rows of this device at outbox.max_pending_per_device (fleet-wide)"}
			g.replay.Forget(ctx, r.Rec.DeviceID, r.Rec.ID) //nolint:errcheck // memory store cannot fail
		}
		env := &envelope.Envelope{DeviceID: r.Rec.DeviceID, MessageID: []byte(r.Rec.MessageID)}
		g.reject(ctx, func() {
			for _, ack := range acks {
				ack()
			}
		}, r.Rec.DeviceID, env, rej)
	}
}

func (g *Gateway) foreign(rows []*outbox.Record) {
	g.writer.Reserve(len(rows))
	for _, r := range rows {
		g.pendingQ.force(r.DeviceID)
		g.log.Info("picked up a retried dead letter", zap.String("device_id", r.DeviceID), zap.String("message_id", r.MessageID))
		g.dispatcher.Submit(job(r))
	}
}

func (g *Gateway) commitFailed(err error, n int, delay time.Duration) {
	g.metrics.infraErrors.WithLabelValues("outbox_commit").Inc()
	msg := err.Error()
	g.commitErr.Store(&msg)
	g.log.Error("OUTBOX COMMIT FAILED: not acking; messages stay with the broker until it succeeds",
		zap.Int("batch", n), zap.Duration("retry_in", delay), zap.Error(err))
}

func (g *Gateway) retrying(j *forward.Job, err error, delay time.Duration) {
	if errors.Is(err, errLeaseUnconfirmed) { // storage, not the backend: sharedFwd reports it (/readyz, log, metric)
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
	ctx := context.Background()
	g.pendingQ.release(j.DeviceID)
	if o.Dead {
		g.metrics.forwarded.WithLabelValues("dead").Inc()
		g.metrics.backendAnswer(0, o.Err)
		g.log.Error("forward gave up; moved to the dead-letter table", zap.String("device_id", j.DeviceID),
			zap.String("message_id", j.MessageID), zap.Int("attempts", j.Attempts), zap.Error(o.Err))
		for delay := 100 * time.Millisecond; ; delay = min(delay*2, 5*time.Second) {
			err := g.store.Bury(ctx, j.Seq, j.Attempts, o.Err.Error(), g.now())
			if err == nil {
				break
			}
			g.metrics.infraErrors.WithLabelValues("deadletter").Inc()
			g.log.Error("cannot move to dead letters; retrying", zap.String("message_id", j.MessageID), zap.Error(err))
			time.Sleep(delay)
		}
		if g.shared != nil {
			g.shared.settled(j)
		} else {
			g.writer.Release(1)
		}
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
	g.notify(ctx, j.DeviceID, envelope.ReplyPayload([]byte(j.MessageID), o.Response.Status, o.Response.Body))
	if g.shared != nil {
		g.shared.settled(j)
		return
	}
	g.writer.Settle(j.Seq)
}

// prune deletes expired replay ids from the outbox database.
func (g *Gateway) prune(ctx context.Context) {
	t := time.NewTicker(g.cfg.Outbox.PruneInterval)
	defer t.Stop()
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

// routes serves /healthz, /readyz and /metrics.
func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n")) //nolint:errcheck
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		var problems []string
		if !g.mqtt.Connected() {
			problems = append(problems, "broker: not connected")
		}
		if g.dispatcher.BreakerOpen() {
			problems = append(problems, "backend: circuit breaker open")
		}
		if p := g.commitErr.Load(); p != nil {
			problems = append(problems, "outbox: commit failing: "+*p)
		}
		if g.shared != nil {
			if p := g.shared.lastErr.Load(); p != nil {
				problems = append(problems, "storage: "+*p)
			}
		}
		if p := g.registryStale(); p != "" {
			problems = append(problems, p)
		}
		if g.writer.Occupied() >= g.cfg.Outbox.MaxPending {
			problems = append(problems, "outbox: full (backpressure)")
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
