package gateway

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/validate"
)

// metrics are the gateway's Prometheus series. Names and labels are stable;
// docs/OBSERVABILITY.md lists them, and deploy/grafana and
// deploy/prometheus use them (test/observability_test.go checks that every
// name they use is served).
//
// Types: every *_total is a counter; levels are gauges; durations are
// histograms. To add a series: a field here, its constructor in
// newMetrics, and the field (or a GaugeFunc/CounterFunc) in the
// MustRegister call.
type metrics struct {
	reg *prometheus.Registry
	// messages is iotgw_messages_total{result,reason}: result is
	// "accepted" (stored durably; reason "none") or "rejected" (reason is
	// the stable validate.Reason code).
	messages    *prometheus.CounterVec
	acceptedAll prometheus.Counter // messages{result="accepted",reason="none"}, resolved once
	received    prometheus.Counter
	accepted    prometheus.Counter
	rejected    *prometheus.CounterVec
	infraErrors *prometheus.CounterVec
	claimed     prometheus.Counter
	forwarded   *prometheus.CounterVec
	// backend is iotgw_backend_responses_total{class}: one per POST
	// attempt per message, by the backend's status class, or "error"
	// when there was no answer (connection refused, timeout).
	backend     *prometheus.CounterVec
	redelivered prometheus.Counter
	queueFull   prometheus.Counter
	replyErrors prometheus.Counter
	commitBatch prometheus.Histogram
	// validation is the time one validator.Check takes (shape, identity,
	// freshness, HMAC, replay).
	validation prometheus.Histogram
	latency    prometheus.Histogram
}

// Label values of iotgw_messages_total and iotgw_backend_responses_total.
const (
	resultAccepted = "accepted"
	resultRejected = "rejected"
	reasonNone     = "none"
)

var backendClasses = []string{"2xx", "3xx", "4xx", "5xx", "error"}

// statsTimeout bounds the database read behind the outbox gauges of one scrape.
const statsTimeout = 2 * time.Second

func newMetrics(g *Gateway) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_messages_total",
			Help: `Uplink messages by verdict: result="accepted" (stored durably, reason="none") or result="rejected" (reason = the stable reason code).`},
			[]string{"result", "reason"}),
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_messages_received_total", Help: "Uplink messages received from the broker."}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_messages_accepted_total", Help: "Messages that passed every check and were stored durably."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_messages_rejected_total", Help: "Messages rejected, by reason code."}, []string{"reason"}),
		infraErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_infra_errors_total",
			Help: "Infrastructure faults by stage (validate, outbox_commit, deadletter); the message is retried, not rejected."}, []string{"stage"}),
		claimed: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_rows_claimed_total",
			Help: "Outbox rows this gateway took under a device lease to forward (storage.engine postgres)."}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_forward_total",
			Help: "Forward outcomes: ok (2xx), final (4xx), retry (retryable failure), dead (dead-lettered)."}, []string{"result"}),
		backend: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_backend_responses_total",
			Help: "Backend answers per message attempt, by status class (2xx, 3xx, 4xx, 5xx) or error (no answer: refused, timeout, transport)."}, []string{"class"}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_redelivered_inflight_total", Help: "Broker redeliveries of messages still being processed, acked with the original."}),
		queueFull: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_validation_queue_full_total",
			Help: "Times a validation queue was full and the MQTT receive path waited for it (backpressure)."}),
		replyErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_reply_publish_errors_total",
			Help: "Replies and notices the MQTT client refused to send (not connected, no message id, queue timeout)."}),
		commitBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotgw_outbox_commit_batch_size", Help: "Messages per outbox transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12)}),
		// 5 µs .. 164 ms: an HMAC is a few µs, a cold registry lookup or a
		// contended replay store is what the upper buckets catch.
		validation: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotgw_validation_duration_seconds",
			Help: "Time to validate one message (shape, identity, freshness, HMAC, replay).", Buckets: prometheus.ExponentialBuckets(5e-6, 2, 16)}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotgw_forward_latency_seconds", Help: "Acceptance to backend answer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}),
	}
	// Every label value exists from the start, so rate() and the alert
	// rules see a 0 rather than no series.
	m.acceptedAll = m.messages.WithLabelValues(resultAccepted, reasonNone)
	for _, r := range validate.Reasons {
		m.rejected.WithLabelValues(string(r))
		m.messages.WithLabelValues(resultRejected, string(r))
	}
	for _, r := range []string{"ok", "final", "retry", "dead"} {
		m.forwarded.WithLabelValues(r)
	}
	for _, s := range []string{"validate", "outbox_commit", "deadletter"} {
		m.infraErrors.WithLabelValues(s)
	}
	for _, c := range backendClasses {
		m.backend.WithLabelValues(c)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	broker := func(conn string, up func(receive, replies bool) bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_broker_connected",
			Help:        `1 while the broker connection is up: connection="receive" (the session, connected and subscribed) or "replies" (publishes replies and notices).`,
			ConstLabels: prometheus.Labels{"connection": conn}}, func() float64 {
			if g.mqtt == nil {
				return 0
			}
			return b2f(up(g.mqtt.ConnState()))
		})
	}
	{
		reg.MustRegister(m.claimed,
			gauge("iotgw_leases_held", "Devices whose rows this gateway forwards under a lease.", func() float64 { return float64(g.forwarder.Held()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "iotgw_leases_lost_total",
				Help: "Device leases found taken over by another gateway at renewal (this gateway was cut off from the database for longer than storage.lease)."},
				func() float64 { return float64(g.forwarder.Lost()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "iotgw_lease_stale_total",
				Help: "Settled rows and drained leases the database refused because this gateway's lease had moved on (fencing: a lost lease changes nothing)."},
				func() float64 { return float64(g.staleFinish.Load()) }))
	}
	reg.MustRegister(m.messages, m.received, m.accepted, m.rejected, m.infraErrors, m.forwarded, m.backend, m.redelivered, m.queueFull, m.replyErrors,
		m.commitBatch, m.validation, m.latency,
		gauge("iotgw_outbox_pending", "Rows in the outbox or on their way in (bounded by outbox.max_pending).", func() float64 { return float64(g.writer.Occupied()) }),
		&outboxStats{g: g,
			oldest: prometheus.NewDesc("iotgw_outbox_oldest_age_seconds", "Age of the oldest row waiting in the outbox; 0 when it is empty.", nil, nil),
			dead:   prometheus.NewDesc("iotgw_dead_letters", "Rows in the dead-letter table (see iotgw deadletter).", nil, nil),
		},
		gauge("iotgw_validation_queue", "Messages received and waiting for validation (bounded by pipeline.workers × pipeline.queue_depth).", func() float64 {
			n := 0
			for _, q := range g.queues {
				n += len(q)
			}
			return float64(n)
		}),
		gauge("iotgw_forward_queue", "Messages queued or in flight to the backend.", func() float64 { return float64(g.dispatcher.Pending()) }),
		gauge("iotgw_forward_payload_bytes", "Bytes of payloads that messages waiting for the backend keep in memory (bounded by backend.max_payload_memory; the rest are read from the outbox when posted).",
			func() float64 { return float64(g.dispatcher.PayloadBytes()) }),
		gauge("iotgw_replay_ids", "Message ids remembered by the replay store.", func() float64 { return float64(g.replay.Len()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "iotgw_replay_full_total", Help: "Ids refused because the replay store was full (fail closed; the message is rejected as quota_exceeded)."},
			func() float64 { return float64(g.replay.FullRejections()) }),
		gauge("iotgw_backend_breaker_open", "1 while the backend circuit breaker is open.", func() float64 { return b2f(g.dispatcher.BreakerOpen()) }),
		broker("receive", func(rx, _ bool) bool { return rx }),
		broker("replies", func(_, tx bool) bool { return tx }),
		gauge("iotgw_registry_devices", "Devices in the registry cache.", func() float64 { return float64(g.keys.Len()) }),
		gauge("iotgw_registry_stale", "1 while registry refreshes fail or leave keys unopened (/readyz says why; fail closed: see iotgw_registry_keys_unavailable).", func() float64 {
			_, err := g.keys.Stale()
			return b2f(err != nil)
		}),
		gauge("iotgw_registry_keys_unavailable", "Enabled devices rejected as key_unavailable: a key of theirs does not open with this gateway's KEK.", func() float64 { return float64(g.keys.Unavailable()) }),
		gauge("iotgw_secrets_sealed", "1 when device secrets are sealed at rest under security.kek_file, 0 when they are stored in the clear.", func() float64 { return b2f(g.reg.Sealed()) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// accept counts n messages stored durably.
func (m *metrics) accept(n int) {
	m.accepted.Add(float64(n))
	m.acceptedAll.Add(float64(n))
}

// reject counts one rejection with its reason code.
func (m *metrics) reject(r validate.Reason) {
	m.rejected.WithLabelValues(string(r)).Inc()
	m.messages.WithLabelValues(resultRejected, string(r)).Inc()
}

// backendAnswer counts one POST attempt's answer: status when the backend
// answered (also when it came back inside a retryable error or a
// redirect error), else "error".
func (m *metrics) backendAnswer(status int, err error) {
	var re *forward.RetryableError
	var rd *forward.RedirectError
	switch {
	case status != 0:
	case errors.As(err, &re):
		status = re.Status
	case errors.As(err, &rd):
		status = rd.Status
	}
	m.backend.WithLabelValues(statusClass(status)).Inc()
}

// statusClass maps an HTTP status to its class label; 0 (no answer) and
// anything outside 200..599 is "error".
func statusClass(status int) string {
	switch {
	case status >= 200 && status < 300:
		return "2xx"
	case status >= 300 && status < 400:
		return "3xx"
	case status >= 400 && status < 500:
		return "4xx"
	case status >= 500 && status < 600:
		return "5xx"
	}
	return "error"
}

// outboxStats serves the gauges that need a database read, with one
// query per scrape (not per message).
type outboxStats struct {
	g            *Gateway
	oldest, dead *prometheus.Desc
}

func (o *outboxStats) Describe(ch chan<- *prometheus.Desc) { ch <- o.oldest; ch <- o.dead }

func (o *outboxStats) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
	defer cancel()
	st, err := o.g.store.Stats(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(o.oldest, err)
		return
	}
	age := 0.0
	if !st.Oldest.IsZero() {
		age = max(o.g.now().Sub(st.Oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(o.oldest, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(o.dead, prometheus.GaugeValue, float64(st.DeadLetters))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func promHandler(reg *prometheus.Registry) http.Handler {
	// ContinueOnError: a database that cannot be read loses the outbox
	// gauges of that scrape, not every series.
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError})
}

var _ prometheus.Collector = (*outboxStats)(nil)
