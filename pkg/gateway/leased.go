package gateway

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/lease"
)

// newLeaseForwarder returns the forwarder of every row: claimed from st
// under per-device leases (see lease.Forwarder). On a shared engine any
// gateway claims any device's rows, and a round trip per claim is paced;
// on a local one (in process) claims are not, and the lease covers a few
// POSTs. Its owner name is unique to this process run.
func (g *Gateway) newLeaseForwarder(st lease.Store) *lease.Forwarder {
	b := make([]byte, 4)
	rand.Read(b) //nolint:errcheck // never fails
	host, _ := os.Hostname()
	owner := fmt.Sprintf("%s@%s/%d/%s", g.cfg.MQTT.ClientID, host, os.Getpid(), hex.EncodeToString(b))
	cfg := lease.Config{Lease: g.cfg.Storage.Lease, Timeout: g.cfg.Backend.Timeout, MaxPayloadMemory: g.cfg.Backend.MaxPayloadMemory,
		Pace: 10 * time.Millisecond}
	if g.engine.Local {
		cfg.Lease, cfg.Pace = max(cfg.Lease, 4*cfg.Timeout), 0
	}
	return lease.New(st, owner, cfg, g.now, g.log.With(zap.String("component", "lease")), lease.Hooks{
		Submit: func(j *forward.Job) { g.dispatcher.Submit(j) },
		// Not while the breaker is open past its cooldown: only a job in
		// the dispatcher can probe the backend and close it again.
		Paused: func() bool { return g.stopping.Load() || g.dispatcher.BreakerCooling() },
		Claimed: func(n int) {
			g.metrics.claimed.Add(float64(n))
		},
		Failed: func(op string, _ error) { g.metrics.infraErrors.WithLabelValues("storage_" + op).Inc() },
		Stale:  func(n int) { g.staleFinish.Add(int64(n)) },
	})
}
