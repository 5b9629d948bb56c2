package gateway

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/limit"
	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/validate"
)

// Time requests (docs/PROTOCOL.md, section 4c): a device without a clock
// publishes {"nonce":"<32 hex>"} on device/<id>/time, and the gateway
// answers on device/<id>/response with a downlink signed with the device's
// downlink key, whose timestamp is the gateway's time and whose payload
// names the nonce. A time request is not a rejection: it never reaches
// the validator, the quarantine, the audit trail or
// iotgw_messages_rejected_total.

// The results of a time request (label values of
// iotgw_time_requests_total).
const (
	timeAnswered  = "answered"  // signed and handed to the MQTT client
	timeLimited   = "limited"   // the device had an answer within limits.notice_interval
	timeMalformed = "malformed" // not a time request (envelope.ParseTimeRequest)
	timeRefused   = "refused"   // unknown, disabled, key_unavailable: nothing to sign with, or not to be served
)

// timeLimitKey is the "reason" the time limiter keys its devices by: it
// is a limiter of its own, so time requests and rejection notices do not
// share a budget.
const timeLimitKey = "time"

// timeRequests answers time requests: at most one answer per device per
// limits.notice_interval, counted by result.
type timeRequests struct {
	limit *limit.Notices // nil: limits.notice_interval is 0 (answer every request)
	total *prometheus.CounterVec
}

// newTimeRequests builds the limiter and registers
// iotgw_time_requests_total in reg, every result at 0.
func newTimeRequests(interval time.Duration, reg *prometheus.Registry) *timeRequests {
	t := &timeRequests{
		limit: limit.NewNotices(interval),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_time_requests_total",
			Help: `Time requests on device/<id>/time by result: answered, limited (another within limits.notice_interval), malformed, refused (unknown, disabled or key_unavailable device). Not rejections.`},
			[]string{"result"}),
	}
	for _, r := range []string{timeAnswered, timeLimited, timeMalformed, timeRefused} {
		t.total.WithLabelValues(r)
	}
	reg.MustRegister(t.total)
	return t
}

// timeRequest handles one message received on device/<id>/time on its
// device's worker: it answers it when it should (answerTime), acks it
// and counts it. Only debug lines are logged: a flood logs nothing at
// info.
func (g *Gateway) timeRequest(ctx context.Context, m *mqttio.Message) {
	defer m.Ack()
	dev := envelope.TimeTopicDevice(m.Topic)
	raw, result, reason := g.answerTime(ctx, dev, m.Payload)
	g.times.total.WithLabelValues(result).Inc()
	if raw == nil {
		g.log.Debug("time request not answered", zap.String("device_id", dev), zap.String("reason", reason))
		return
	}
	g.log.Debug("time request answered", zap.String("device_id", dev))
	if err := g.mqtt.Publish(envelope.ResponseTopic(dev), raw); err != nil {
		g.metrics.replyErrors.Inc()
		if g.replyErrLog.allow() {
			g.log.Warn("reply not published (see iotgw_reply_publish_errors_total)", zap.String("device_id", dev), zap.Error(err))
		}
	}
}

// answerTime returns the signed answer to payload, a time request
// received on device/<dev>/time, or nil; with the result to count and,
// for no answer, why (a reason code, or "limited"). It reads the clock
// once: for the limiter and the answer's timestamp.
func (g *Gateway) answerTime(ctx context.Context, dev string, payload []byte) (raw []byte, result, reason string) {
	nonce, err := envelope.ParseTimeRequest(payload)
	if err != nil {
		return nil, timeMalformed, string(validate.Malformed)
	}
	d, err := g.keys.Device(ctx, dev)
	switch {
	case errors.Is(err, validate.ErrUnknownDevice):
		g.downlink.Forget(dev)
		return nil, timeRefused, string(validate.UnknownDevice)
	case err != nil: // fail closed: no key, no answer
		return nil, timeRefused, string(validate.KeyUnavailable)
	case !d.Enabled:
		return nil, timeRefused, string(validate.Disabled)
	case d.KeyUnavailable:
		g.downlink.Forget(dev)
		return nil, timeRefused, string(validate.KeyUnavailable)
	}
	now := g.now()
	if !g.times.limit.Allow(dev, timeLimitKey, now) {
		return nil, timeLimited, timeLimited
	}
	e := envelope.Envelope{DeviceID: dev, Timestamp: now.Unix(), MessageID: envelope.NewMessageID(),
		Payload: envelope.TimeReplyPayload(nonce)}
	e.TimestampRaw = strconv.AppendInt(nil, e.Timestamp, 10)
	if err := g.downlink.Sign(ctx, &e); err != nil { // removed or unopenable since the lookup, or no valid key
		if errors.Is(err, validate.ErrUnknownDevice) {
			return nil, timeRefused, string(validate.UnknownDevice)
		}
		return nil, timeRefused, string(validate.KeyUnavailable)
	}
	return envelope.AppendJSON(make([]byte, 0, 256), &e), timeAnswered, ""
}

// isTimeRequest reports whether m arrived on a device's time topic.
func isTimeRequest(m *mqttio.Message) bool { return envelope.TimeTopicDevice(m.Topic) != "" }
