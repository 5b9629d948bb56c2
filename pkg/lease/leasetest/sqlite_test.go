package leasetest_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/lease/leasetest"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
)

// TestSQLite runs the parts of the contract the SQLite engine has: commit,
// replay ids, the horizon (its prune takes the caller's clock and window)
// and dead letters. It has no leases, and its replay authority is the
// single gateway's in-memory window, so those cases are skipped.
func TestSQLite(t *testing.T) {
	leasetest.Run(t, leasetest.Driver{
		Open: func(t *testing.T, opt leasetest.Options) *leasetest.Engine {
			cfg := outbox.DefaultConfig()
			cfg.Path = filepath.Join(t.TempDir(), "outbox.db")
			s, err := sqlitestore.Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return &leasetest.Engine{
				Commit: func(ctx context.Context, recs []*outbox.Record) (outbox.Result, error) {
					return s.Commit(ctx, recs, nil, -1)
				},
				Count:   s.Count,
				Rows:    s.PendingMeta,
				Payload: s.Payload,
				Seen: &leasetest.Seen{
					Prune:   func(ctx context.Context) (int64, error) { return s.PruneSeen(ctx, time.Now(), opt.Window) },
					Horizon: s.SeenHorizon,
					IDs: func(ctx context.Context, fn func(string, [16]byte, time.Time) error) error {
						return s.Seen(ctx, time.Unix(0, 0), opt.Window, fn)
					},
				},
				Dead: &leasetest.Dead{
					Bury: func(ctx context.Context, seq int64, d lease.Dead) error {
						return s.Bury(ctx, seq, d.Attempts, d.LastError, d.At)
					},
					List: s.DeadLetters, Retry: s.RetryDead, Drop: s.DropDead,
				},
			}
		},
	})
}
