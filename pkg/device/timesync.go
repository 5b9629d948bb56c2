package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// TimeTopic returns the topic device id asks the gateway for the time on.
func TimeTopic(id string) string { return envelope.TimeTopic(id) }

// clockSync is the gateway's time at one reading of the device's clock.
type clockSync struct {
	gateway time.Time // the time the gateway's answer carried
	local   time.Time // Config.Now when the answer arrived
}

// timeAnswer is what SyncTime waits for: the gateway's time, and the
// device's clock when the answer arrived.
type timeAnswer struct {
	gateway int64
	local   time.Time
}

// Now returns the device's time, which Publish and Request sign with:
// after a successful SyncTime, the gateway's time it answered plus the
// time elapsed since on Config.Now (with time.Now, Go's monotonic clock,
// so a step of the wall clock does not move it); before, Config.Now.
func (d *Device) Now() time.Time {
	if s := d.clock.Load(); s != nil {
		return s.gateway.Add(d.now().Sub(s.local))
	}
	return d.now()
}

// SyncTime asks the gateway for the time (docs/PROTOCOL.md, section 4c)
// and, once a verified answer comes, sets the device's clock (Now) to it
// and returns it. For a device without a clock (no RTC, no NTP): call it
// after Dial, before the first Publish, and again now and then to bound
// drift.
//
// It publishes {"nonce":"<32 random hex>"} on device/<id>/time at QoS 1
// and waits for the downlink whose payload names that nonce, checked
// with envelope.CheckTimeReply: signed with the device's downlink key, for
// this device, byte for byte the answer to this nonce. Anything else is
// ignored: an answer to another nonce (captured earlier and replayed), a
// downlink signed with the uplink key, a tampered time. Each call uses a
// new nonce, spent once answered.
//
// The gateway answers a device at most once per second
// (limits.notice_interval) and never answers a device it does not know,
// a disabled one or a malformed request; SyncTime then waits until ctx
// ends, and returns its error: give ctx a timeout, and try again after a
// second. The time is whole seconds, taken when the gateway answered: the
// clock is behind by less than a second plus the round trip, far inside
// the gateway's ±5 minutes.
func (d *Device) SyncTime(ctx context.Context) (time.Time, error) {
	if d.publishOnly {
		return time.Time{}, ErrPublishOnly
	}
	var b [envelope.NonceLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return time.Time{}, fmt.Errorf("time request nonce: %w", err)
	}
	nonce := hex.EncodeToString(b[:])
	ch := make(chan timeAnswer, 1)
	d.mu.Lock()
	d.timeWaiters[nonce] = ch
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.timeWaiters, nonce)
		d.mu.Unlock()
	}()
	p := &Pending{ID: "time request", tok: d.client.Publish(TimeTopic(d.id), QoS, false, envelope.TimeRequest([]byte(nonce)))}
	if err := p.Wait(ctx); err != nil {
		return time.Time{}, err
	}
	select {
	case a := <-ch:
		gw := time.Unix(a.gateway, 0)
		d.clock.Store(&clockSync{gateway: gw, local: a.local})
		return gw, nil
	case <-ctx.Done():
		return time.Time{}, fmt.Errorf("time request: no verified answer: %w", ctx.Err())
	case <-d.closed:
		return time.Time{}, fmt.Errorf("time request: %w", ErrClosed)
	}
}

// timeReply hands raw, a downlink received at local, to the SyncTime
// waiting for it, if any: the one whose nonce CheckTimeReply accepts it
// for. It runs on Paho's goroutines and never blocks.
func (d *Device) timeReply(raw []byte, local time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for nonce, ch := range d.timeWaiters {
		d.downMu.Lock()
		ts, err := envelope.CheckTimeReply(d.downMAC, d.id, raw, []byte(nonce))
		d.downMu.Unlock()
		if err == nil {
			delete(d.timeWaiters, nonce) // spent: a second copy finds no waiter
			ch <- timeAnswer{gateway: ts, local: local}
			return
		}
	}
}
