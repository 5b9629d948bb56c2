package leasetest_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/lease/leasetest"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
)

// TestSQLite runs the contract against the SQLite engine: commit, replay
// ids, the horizon (its prune takes the caller's clock and window), dead
// letters, and leases answered in process (sqlitestore.Leases, whose
// deletes go through a writer: here one that deletes at once). Its replay
// authority is the single gateway's in-memory window and it has no quota
// in the database, so those cases are skipped.
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
			l := s.Leases(deleteNow{s}, 1<<20, time.Now)
			return &leasetest.Engine{
				Commit: func(ctx context.Context, recs []*outbox.Record) (outbox.Result, error) {
					return s.Commit(ctx, recs, nil, -1)
				},
				Count:   s.Count,
				Rows:    s.PendingMeta,
				Payload: s.Payload,
				Leases:  l,
				Seen: &leasetest.Seen{
					Prune:   func(ctx context.Context) (int64, error) { return s.PruneSeen(ctx, time.Now(), opt.Window) },
					Horizon: s.SeenHorizon,
					IDs: func(ctx context.Context, fn func(string, [16]byte, time.Time) error) error {
						return s.Seen(ctx, time.Unix(0, 0), opt.Window, fn)
					},
				},
				// Leased rows are buried by Finish, under their lease.
				Dead:         &leasetest.Dead{List: s.DeadLetters, Retry: s.RetryDead, Drop: s.DropDead},
				ResetCounter: s.ResetCounter,
			}
		},
	})
}

// deleteNow is the writer sqlitestore.Leases hands finished rows to: the
// gateway's outbox.Writer deletes them in its next commit; this deletes
// each at once, so the suite sees the effect when Finish returns.
type deleteNow struct{ s *sqlitestore.Store }

func (w deleteNow) Settle(seq int64) {
	if err := w.s.Delete(context.Background(), []int64{seq}); err != nil {
		panic(err)
	}
}

func (deleteNow) Release(int) {}
