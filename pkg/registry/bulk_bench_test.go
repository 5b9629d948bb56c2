package registry_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
	"github.com/iotgw/iotgw/pkg/registry"
)

// BenchmarkAddMany10000 registers 10,000 devices in one AddMany, as
// "iotgw device import" does, with their secrets sealed under a KEK, on
// each engine (PostgreSQL at 127.0.0.1:5432, pgtest). One op is one
// import into an empty registry; devices/s is the rate.
func BenchmarkAddMany10000(b *testing.B) {
	const n = 10_000
	hex, err := registry.NewKEKHex()
	if err != nil {
		b.Fatal(err)
	}
	kek, err := registry.ParseKEK(hex)
	if err != nil {
		b.Fatal(err)
	}
	devs := make([]registry.NewDevice, n)
	for i := range devs {
		s, err := registry.NewSecret()
		if err != nil {
			b.Fatal(err)
		}
		devs[i] = registry.NewDevice{ID: fmt.Sprintf("bulk-%05d", i), Secret: s}
	}
	ctx := context.Background()
	engines := []struct {
		name string
		open func(b *testing.B) *registry.Registry
	}{
		{"sqlite", func(b *testing.B) *registry.Registry {
			r, err := registry.Open(ctx, filepath.Join(b.TempDir(), "r.db"), registry.WithKEK(kek))
			if err != nil {
				b.Fatal(err)
			}
			return r
		}},
		{"postgres", func(b *testing.B) *registry.Registry {
			db, err := pgstore.Open(ctx, pgtest.New(b))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(db.Close)
			sdb := pgstore.SQLDB(db)
			b.Cleanup(func() { sdb.Close() })
			r, err := registry.OpenDB(ctx, sdb, pgstore.Dialect, registry.WithKEK(kek))
			if err != nil {
				b.Fatal(err)
			}
			return r
		}},
	}
	for _, e := range engines {
		b.Run(e.name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				r := e.open(b)
				b.StartTimer()
				added, _, err := r.AddMany(ctx, devs, registry.BulkOptions{})
				if err != nil || len(added) != n {
					b.Fatalf("AddMany: %d added, %v", len(added), err)
				}
				b.StopTimer()
				r.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "devices/s")
		})
	}
}
