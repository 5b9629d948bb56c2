package sim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/device"
	"github.com/iotgw/iotgw/pkg/envelope"
)

// The rows of issue 17: a device without a clock that asks the gateway
// for the time (docs/PROTOCOL.md, section 4c), the time reply reflected as
// an uplink, and a counter-mode device's replay (section 2a).

// noClock reconnects the second device as a device without a clock: its
// clock reads 1970 from the moment it boots. Its first message is refused
// as stale; it asks the gateway for the time (device.SyncTime) and its
// next message is accepted and forwarded.
func (d *demo) noClock(ctx context.Context) demoRow {
	row := demoRow{Scenario: fmt.Sprintf("(q) %s without a clock (it reads 1970): sends, asks the gateway for the time, sends again", d.b.id),
		Expected: "rejected: stale; then clock set, status 200"}
	d.b.Close() // one connection per certificate: the clockless device replaces it
	boot := time.Now()
	dev, err := d.connect(ctx, d.b.id, d.f.secrets[d.b.id], func(c *device.Config) {
		c.Now = func() time.Time { return time.Unix(0, 0).Add(time.Since(boot)) }
	})
	if err != nil {
		row.Observed = err.Error()
		return row
	}
	d.clockless = dev
	defer d.noticeSlot(ctx, dev, "stale")()
	rctx, cancel := context.WithTimeout(ctx, 2*d.o.Timeout)
	defer cancel()
	at := dev.Now()
	first := dev.Sign(at, reading(200))
	_, err = dev.RequestMessage(rctx, first)
	var rej *device.RejectedError
	if !errors.As(err, &rej) || rej.Reason != "stale" {
		row.Observed = "first message: " + outcome(err)
		return row
	}
	obs := fmt.Sprintf("rejected: stale (signed at %s)", at.UTC().Format("2006-01-02 15:04:05"))
	gw, err := dev.SyncTime(rctx)
	if err != nil {
		row.Observed = obs + "; time request: " + err.Error()
		return row
	}
	obs += fmt.Sprintf("; gateway time %s", gw.UTC().Format(time.TimeOnly))
	m := dev.Sign(dev.Now(), reading(201))
	r, err := dev.RequestMessage(rctx, m)
	if err != nil || r.Status != 200 {
		row.Observed = obs + "; then " + outcome(err)
		if err == nil {
			row.Observed += fmt.Sprintf("status %d", r.Status)
		}
		return row
	}
	row.Observed, row.Pass = d.checkBackend(ctx, obs+"; then status 200", true, m.ID, 1)
	return row
}

// outcome describes a Request's error.
func outcome(err error) string {
	var rej *device.RejectedError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &rej):
		return "rejected: " + rej.Reason
	case errors.Is(err, context.DeadlineExceeded):
		return "no reply"
	}
	return err.Error()
}

// reflectedTime republishes the signed time reply of row (q) as an
// uplink: it is signed with the downlink key, so it is a bad_signature.
func (d *demo) reflectedTime(ctx context.Context) demoRow {
	const name = "(r) signed time reply reflected as an uplink"
	dev := d.clockless
	if dev == nil {
		return demoRow{Scenario: name, Expected: "rejected: bad_signature", Observed: "no time reply to reflect: row (q) did not run"}
	}
	for _, r := range dev.since(0) {
		if r.Verified && r.TimeFor != "" {
			e, err := envelope.Parse(r.Raw, envelope.Limits{})
			if err != nil {
				return demoRow{Scenario: name, Expected: "rejected: bad_signature", Observed: err.Error()}
			}
			return d.expectRejection(ctx, name, dev, dataTopic(dev.id), string(e.MessageID), r.Raw, "bad_signature")
		}
	}
	return demoRow{Scenario: name, Expected: "rejected: bad_signature", Observed: "no verified time reply to reflect"}
}

// counterReplay plays a counter-mode device (o.CounterDevice, registered
// with --freshness counter): it sends a reading, then three more, then
// the first again, byte for byte. A counter message carries no time, so
// no freshness window ever closes on it: it is refused because its counter
// is at or below the highest the gateway accepted from the device, a
// bound kept durably with the outbox. The same check refuses it an hour
// or a year later, or after a gateway restart.
func (d *demo) counterReplay(ctx context.Context) demoRow {
	id := d.o.CounterDevice
	row := demoRow{Scenario: fmt.Sprintf("(s) counter-mode %s: a captured message replayed after 3 later ones (no time in it)", id),
		Expected: "rejected: replay"}
	if id == "" {
		row.Observed, row.Pass = "skipped (--counter-device \"\")", true
		return row
	}
	secret, ok := d.f.secrets[id]
	if !ok {
		row.Observed = "no secret for " + id
		return row
	}
	counter, err := device.NewCounter(&memCounter{}, 0)
	if err != nil {
		row.Observed = err.Error()
		return row
	}
	dev, err := d.connect(ctx, id, secret, func(c *device.Config) { c.Counter = counter })
	if err != nil {
		row.Observed = err.Error()
		return row
	}
	defer dev.Close()
	captured, err := dev.SignCounter(reading(300))
	if err != nil {
		row.Observed = err.Error()
		return row
	}
	for i, m := range []func() (device.Message, error){
		func() (device.Message, error) { return captured, nil },
		func() (device.Message, error) { return dev.SignCounter(reading(301)) },
		func() (device.Message, error) { return dev.SignCounter(reading(302)) },
		func() (device.Message, error) { return dev.SignCounter(reading(303)) },
	} {
		msg, err := m()
		if err != nil {
			row.Observed = err.Error()
			return row
		}
		rctx, cancel := context.WithTimeout(ctx, 2*d.o.Timeout)
		r, err := dev.RequestMessage(rctx, msg)
		cancel()
		if err != nil || r.Status != 200 {
			row.Observed = fmt.Sprintf("message %d of 4 (before the replay): %s", i+1, outcome(err))
			return row
		}
	}
	return d.expectRejectionN(ctx, row.Scenario, dev, dataTopic(id), captured.ID, captured.Raw, "replay", 1)
}

// memCounter is a device.CounterStore in memory: the demo's counter-mode
// device lives for one run (its counters start at 1 in a fresh registry).
type memCounter struct {
	mu    sync.Mutex
	start int64
	ok    bool
}

func (m *memCounter) Load() (int64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.start, m.ok, nil
}

func (m *memCounter) Save(start int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.start, m.ok = start, true
	return nil
}

var _ device.CounterStore = (*memCounter)(nil)
