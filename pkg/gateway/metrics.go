package gateway

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/iotgw/iotgw/pkg/validate"
)

// metrics are the gateway's Prometheus series. Names and labels are stable.
type metrics struct {
	reg         *prometheus.Registry
	received    prometheus.Counter
	accepted    prometheus.Counter
	rejected    *prometheus.CounterVec
	infraErrors *prometheus.CounterVec
	forwarded   *prometheus.CounterVec
	redelivered prometheus.Counter
	queueFull   prometheus.Counter
	replyErrors prometheus.Counter
	commitBatch prometheus.Histogram
	latency     prometheus.Histogram
}

func newMetrics(g *Gateway) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg:      reg,
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_messages_received_total", Help: "Uplink messages received from the broker."}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_messages_accepted_total", Help: "Messages that passed every check and were stored durably."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_messages_rejected_total", Help: "Messages rejected, by reason code."}, []string{"reason"}),
		infraErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_infra_errors_total",
			Help: "Infrastructure faults by stage (validate, outbox_commit, outbox_delete, deadletter); the message is retried, not rejected."}, []string{"stage"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_forward_total",
			Help: "Forward outcomes: ok (2xx), final (4xx), retry (retryable failure), dead (dead-lettered)."}, []string{"result"}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_redelivered_inflight_total", Help: "Broker redeliveries of messages still being processed, acked with the original."}),
		queueFull: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_validation_queue_full_total",
			Help: "Times a validation queue was full and the MQTT receive path waited for it (backpressure)."}),
		replyErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_reply_publish_errors_total",
			Help: "Replies and notices the MQTT client refused to send (not connected, no message id, queue timeout)."}),
		commitBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotgw_outbox_commit_batch_size", Help: "Messages per outbox transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12)}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotgw_forward_latency_seconds", Help: "Acceptance to backend answer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}),
	}
	for _, r := range validate.Reasons {
		m.rejected.WithLabelValues(string(r))
	}
	for _, r := range []string{"ok", "final", "retry", "dead"} {
		m.forwarded.WithLabelValues(r)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	reg.MustRegister(m.received, m.accepted, m.rejected, m.infraErrors, m.forwarded, m.redelivered, m.queueFull, m.replyErrors, m.commitBatch, m.latency,
		gauge("iotgw_outbox_pending", "Rows in the outbox or on their way in (bounded by outbox.max_pending).", func() float64 { return float64(g.writer.Occupied()) }),
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
		gauge("iotgw_replay_full_total", "Ids refused because the replay store was full (fail closed; the message is rejected as quota_exceeded).", func() float64 { return float64(g.replay.FullRejections()) }),
		gauge("iotgw_backend_breaker_open", "1 while the backend circuit breaker is open.", func() float64 { return b2f(g.dispatcher.BreakerOpen()) }),
		gauge("iotgw_mqtt_connected", "1 while connected and subscribed to the broker.", func() float64 { return b2f(g.mqtt != nil && g.mqtt.Connected()) }),
		gauge("iotgw_registry_devices", "Devices in the registry cache.", func() float64 { return float64(g.keys.Len()) }),
		gauge("iotgw_secrets_sealed", "1 when device secrets are sealed at rest under security.kek_file, 0 when they are stored in the clear.", func() float64 { return b2f(g.reg.Sealed()) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func promHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
