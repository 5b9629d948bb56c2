package leasetest_test

import (
	"context"
	"testing"
	"testing/synctest"

	"github.com/iotgw/iotgw/pkg/lease/leasetest"
	"github.com/iotgw/iotgw/pkg/lease/memstore"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// TestMemstore runs the contract against the simulation's model, each case
// in a synctest bubble (fake time).
func TestMemstore(t *testing.T) {
	leasetest.Run(t, leasetest.Driver{
		Bubble: func(t *testing.T, f func(t *testing.T)) { synctest.Test(t, f) },
		Open: func(t *testing.T, opt leasetest.Options) *leasetest.Engine {
			c := memstore.New(memstore.Config{Quota: opt.Quota, Window: opt.Window}).Conn("test")
			return &leasetest.Engine{
				Commit: func(ctx context.Context, recs []*outbox.Record) (outbox.Result, error) {
					return c.Commit(ctx, recs, nil, -1)
				},
				Count:           c.Count,
				ReplayAuthority: true,
				QuotaRefusal:    true,
				Leases:          c,
				Payload:         c.Payload,
				Seen:            &leasetest.Seen{Prune: c.PruneSeen, Horizon: c.SeenHorizon, IDs: c.Seen, HorizonRefusal: true},
				Dead:            &leasetest.Dead{List: c.DeadLetters, Retry: c.RetryDead, Drop: c.DropDead},
				ResetCounter:    c.ResetCounter,
			}
		},
	})
}
