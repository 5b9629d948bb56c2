package audit

import (
	"context"
	"database/sql"
	"testing"

	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
)

// engine opens a fresh audit trail on one storage engine: open returns a
// Log and a raw handle on its database (for tampering); again opens a
// second Log on the same database with connections of its own, as another
// process would.
type engine struct {
	name  string
	open  func(t *testing.T) (*Log, *sql.DB)
	again func(t *testing.T) *Log
}

// forEngines runs test once per engine, each on a fresh database.
func forEngines(t *testing.T, test func(*testing.T, engine)) {
	t.Run("sqlite", func(t *testing.T) {
		var path string
		e := engine{name: "sqlite"}
		e.open = func(t *testing.T) (*Log, *sql.DB) {
			var l *Log
			l, path = openTemp(t)
			return l, rawDB(t, path)
		}
		e.again = func(t *testing.T) *Log {
			l, err := Open(context.Background(), path, clockAt(t0))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			return l
		}
		test(t, e)
	})
	t.Run("postgres", func(t *testing.T) {
		var dsn string
		e := engine{name: "postgres"}
		openPG := func(t *testing.T) (*Log, *sql.DB) {
			db, err := pgstore.Open(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(db.Close)
			sdb := pgstore.SQLDB(db)
			t.Cleanup(func() { sdb.Close() })
			l, err := OpenDB(context.Background(), sdb, pgstore.Dialect, clockAt(t0))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			return l, sdb
		}
		e.open = func(t *testing.T) (*Log, *sql.DB) { dsn = pgtest.New(t); return openPG(t) }
		e.again = func(t *testing.T) *Log { l, _ := openPG(t); return l }
		test(t, e)
	})
}

// TestVerifyDuringAppends: Verify reads the rows and the head in one
// snapshot, so appends committed meanwhile (by another gateway) never make
// an intact chain look broken.
func TestVerifyDuringAppends(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		a, _ := e.open(t)
		b := e.again(t)
		fill(t, a, 3)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			defer close(done)
			for i := 0; ctx.Err() == nil; i++ {
				if err := b.Append(ctx, &Entry{Actor: "gateway", Action: "reject", Reason: "stale"}); err != nil && ctx.Err() == nil {
					done <- err
					return
				}
			}
		}()
		for range 50 {
			if _, err := a.Verify(context.Background()); err != nil {
				cancel()
				t.Fatalf("Verify while another process appends: %v", err)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, err := a.Verify(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}
