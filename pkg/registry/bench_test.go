package registry_test

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/iotgw/iotgw/pkg/registry"
)

// BenchmarkCacheBytesPerDevice measures the live heap the gateway's
// in-memory registry (Cache) holds per registered device, with 10,000
// devices whose secrets come from NewSecret (the B/device metric). This is
// "the registry entry" that issue 5's idle-device target allows; make
// bench compares the running gateway's cost per idle device with it. One
// op loads one cache.
func BenchmarkCacheBytesPerDevice(b *testing.B) {
	const devices = 10_000
	ctx := context.Background()
	r, err := registry.Open(ctx, filepath.Join(b.TempDir(), "registry.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	for i := range devices {
		s, err := registry.NewSecret()
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Add(ctx, fmt.Sprintf("bench-%d", i+1), s); err != nil {
			b.Fatal(err)
		}
	}
	var perDevice float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		c, err := registry.NewCache(ctx, r)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if c.Len() != devices {
			b.Fatalf("cache holds %d devices, want %d", c.Len(), devices)
		}
		perDevice = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / devices
		c.Close()
	}
	b.ReportMetric(perDevice, "B/device")
}
