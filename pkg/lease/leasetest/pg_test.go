package leasetest_test

import (
	"context"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/lease/leasetest"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
)

// TestPostgres runs the whole contract against the PostgreSQL engine, each
// case on a private database (pgtest.New) whose fleet freshness window is
// the case's.
func TestPostgres(t *testing.T) {
	leasetest.Run(t, leasetest.Driver{
		Open: func(t *testing.T, opt leasetest.Options) *leasetest.Engine {
			db, err := pgstore.Open(context.Background(), pgtest.New(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(db.Close)
			o := db.Outbox(opt.Quota)
			if err := o.FreshnessWindow(context.Background(), opt.Window); err != nil {
				t.Fatal(err)
			}
			return &leasetest.Engine{
				Commit: func(ctx context.Context, recs []*outbox.Record) (outbox.Result, error) {
					return o.Commit(ctx, recs, nil, -1)
				},
				Count:           o.Count,
				Rows:            o.PendingMeta,
				Leases:          o,
				Payload:         o.Payload,
				ReplayAuthority: true,
				QuotaRefusal:    true,
				Seen: &leasetest.Seen{
					// The engine's own clock and the fleet's window: the arguments are ignored.
					Prune:   func(ctx context.Context) (int64, error) { return o.PruneSeen(ctx, time.Time{}, 0) },
					Horizon: o.SeenHorizon,
					IDs: func(ctx context.Context, fn func(string, [16]byte, time.Time) error) error {
						return o.Seen(ctx, time.Unix(0, 0), opt.Window, fn)
					},
					HorizonRefusal: true,
				},
				// Leased rows are buried by Finish, under their lease.
				Dead:         &leasetest.Dead{List: o.DeadLetters, Retry: o.RetryDead, Drop: o.DropDead},
				ResetCounter: o.ResetCounter,
			}
		},
	})
}
