package gateway

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/audit"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/limit"
	"github.com/iotgw/iotgw/pkg/validate"
)

// auditMaxPending bounds the folded audit entries waiting for the disk.
// A flood folds into one entry per device, reason and second, so this is
// reached only when the database is locked or very slow; then new entries
// are dropped and counted in iotgw_audit_dropped_total.
const auditMaxPending = 10000

// abuse holds the gateway's per-device abuse controls (pkg/limit) and its
// audit trail (pkg/audit).
type abuse struct {
	limits     *limit.Devices // nil: limits.device_rate is 0
	notices    *limit.Notices
	quarantine *limit.Quarantine // nil: limits.quarantine_after is 0
	log        *audit.Log
	logClose   func() error
	writer     *audit.Writer
	errLog     logEvery

	suppressed  *prometheus.CounterVec
	quarantined prometheus.Counter
}

// openAbuse opens the audit trail in the registry's file and builds the
// limiters; the validator is told about the rate limiter.
func (g *Gateway) openAbuse(ctx context.Context) error {
	a := &abuse{
		limits:     limit.NewDevices(g.cfg.Limits.DeviceRate, g.cfg.Limits.DeviceBurst),
		notices:    limit.NewNotices(g.cfg.Limits.NoticeInterval),
		quarantine: limit.NewQuarantine(g.cfg.Limits.QuarantineAfter, g.cfg.Limits.QuarantineWindow),
	}
	var err error
	if a.log, a.logClose, err = g.engine.OpenAudit(ctx, g.now); err != nil {
		return err
	}
	a.writer = audit.NewWriter(a.log, auditMaxPending, g.now, func(err error) {
		if a.errLog.allow() {
			g.log.Error("cannot append to the audit trail; entries kept and retried (see iotgw_audit_errors_total)", zap.Error(err))
		}
	})
	if a.limits != nil {
		g.validator.LimitWith(a.limits)
	}
	g.abuse = a
	return nil
}

// register adds the abuse series to reg.
func (a *abuse) register(reg *prometheus.Registry, now func() time.Time) {
	a.suppressed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_notices_suppressed_total",
		Help: "Rejection notices not sent because the device already got one for that reason within the last second (the rejection is still counted)."}, []string{"reason"})
	a.quarantined = prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_quarantined_total",
		Help: "Devices disabled automatically after limits.quarantine_after bad signatures within limits.quarantine_window."})
	for _, r := range validate.Reasons {
		a.suppressed.WithLabelValues(string(r))
	}
	counter := func(name, help string, f func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f()) })
	}
	reg.MustRegister(a.suppressed, a.quarantined,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_rate_limited_devices",
			Help: "Devices that had a message refused as rate_limited within the last minute."},
			func() float64 { return float64(a.limits.LimitedDevices(now(), time.Minute)) }),
		counter("iotgw_audit_entries_written_total", "Entries appended to the audit trail (folded rejections count once).", a.writer.Written),
		counter("iotgw_audit_dropped_total", "Events not recorded in the audit trail because too many entries waited for the disk, or a field was over its limit.", a.writer.Dropped),
		counter("iotgw_audit_errors_total", "Failed audit trail appends (retried at the next flush).", a.writer.Failed),
	)
}

func (a *abuse) close() {
	if a != nil && a.logClose != nil {
		a.logClose() //nolint:errcheck // closing at exit
	}
}

// rejected runs for every rejection before its notice: it records the
// rejection in the audit trail (folded per second), counts bad signatures
// for quarantine, and reports whether a notice may go out (at most one per
// device and reason per second).
func (g *Gateway) rejected(dev string, env *envelope.Envelope, rej *validate.Rejection) (notice bool) {
	a := g.abuse
	now := g.now()
	e := audit.Entry{At: now, Actor: "gateway", Device: dev, Action: "reject", Reason: string(rej.Reason)}
	if rej.Reason != validate.Malformed && len(env.MessageID) <= 64 {
		e.MessageID = string(env.MessageID) // a parsed, canonical message id
	}
	a.writer.Record(e)
	if rej.Reason == validate.BadSignature && a.quarantine.BadSignature(dev, now) {
		go g.quarantineDevice(dev)
	}
	if dev == "" {
		return false
	}
	return a.notices.Allow(dev, string(rej.Reason), now)
}

// quarantineDevice disables dev in the registry after too many bad
// signatures; the registry cache picks it up within registry.refresh.
func (g *Gateway) quarantineDevice(dev string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l := g.cfg.Limits
	if err := g.reg.SetEnabled(ctx, dev, false); err != nil {
		g.log.Error("cannot quarantine device; it stays enabled", zap.String("device_id", dev), zap.Error(err))
		return
	}
	g.abuse.quarantined.Inc()
	g.log.Warn("device quarantined: disabled in the registry (iotgw device enable re-enables it)", zap.String("device_id", dev),
		zap.String("reason", string(validate.BadSignature)), zap.Int("rejections", l.QuarantineAfter), zap.Duration("window", l.QuarantineWindow))
	g.abuse.writer.Record(audit.Entry{Actor: "gateway", Device: dev, Action: "quarantine", Reason: string(validate.BadSignature), Count: int64(l.QuarantineAfter)})
}
