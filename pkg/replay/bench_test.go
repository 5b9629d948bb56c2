package replay_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"runtime"
	"sync"
	"testing"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

// lruStore is the obvious alternative to Memory, built on golang-lru/v2,
// kept here only to measure Memory against it. It stores the same 16-byte
// key (UUID mixed with a keyed hash of the device id) and 4-byte expiry, and
// has the same semantics: a live id is never evicted; when the oldest
// entry is still live the store is full.
type lruStore struct {
	mu    sync.Mutex
	seed  maphash.Seed
	now   func() time.Time
	cache *lru.Cache[[16]byte, uint32]
	size  int
}

func newLRUStore(size int, now func() time.Time) *lruStore {
	c, err := lru.New[[16]byte, uint32](size)
	if err != nil {
		panic(err)
	}
	return &lruStore{seed: maphash.MakeSeed(), now: now, cache: c, size: size}
}

func (s *lruStore) Record(_ context.Context, deviceID string, id [16]byte, expires, at time.Time) (bool, error) {
	k := id
	binary.LittleEndian.PutUint64(k[:8], binary.LittleEndian.Uint64(id[:8])^maphash.String(s.seed, deviceID))
	now := uint32(at.Unix())
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.cache.Peek(k); ok && e >= now {
		return true, nil
	}
	for s.cache.Len() >= s.size {
		_, e, _ := s.cache.GetOldest()
		if e >= now {
			return false, validate.ErrReplayFull
		}
		s.cache.RemoveOldest()
	}
	s.cache.Add(k, uint32(expires.Unix()))
	return false, nil
}

func (s *lruStore) Forget(_ context.Context, deviceID string, id [16]byte) error {
	k := id
	binary.LittleEndian.PutUint64(k[:8], binary.LittleEndian.Uint64(id[:8])^maphash.String(s.seed, deviceID))
	s.mu.Lock()
	s.cache.Remove(k)
	s.mu.Unlock()
	return nil
}

var _ validate.ReplayStore = (*lruStore)(nil)

// stores are the implementations measured side by side.
var stores = []struct {
	name string
	new  func(size int, now func() time.Time) validate.ReplayStore
}{
	{"windowed", func(size int, now func() time.Time) validate.ReplayStore { return replay.NewMemory(size, now) }},
	{"golang-lru", func(size int, now func() time.Time) validate.ReplayStore { return newLRUStore(size, now) }},
}

// uuidFor spreads n over all 16 bytes, as random v4 UUIDs are.
func uuidFor(n uint64) (id [16]byte) {
	binary.LittleEndian.PutUint64(id[:8], n*0x9E3779B97F4A7C15)
	binary.LittleEndian.PutUint64(id[8:], (n+1)*0xBF58476D1CE4E5B9)
	return id
}

func devices(n int) []string {
	d := make([]string, n)
	for i := range d {
		d[i] = fmt.Sprintf("sensor_%04d", i)
	}
	return d
}

func BenchmarkMemoryRecord(b *testing.B) {
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			now := func() time.Time { return t0 }
			devs := devices(1000)
			exp := t0.Add(5 * time.Minute)
			s := st.new(1<<30, now) // never full
			b.ReportAllocs()
			var n uint64
			for b.Loop() {
				if _, err := s.Record(context.Background(), devs[n%1000], uuidFor(n), exp, t0); err != nil {
					b.Fatal(err)
				}
				n++
			}
		})
	}
}

func BenchmarkMemoryRecordParallel(b *testing.B) {
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			now := func() time.Time { return t0 }
			devs := devices(1000)
			exp := t0.Add(5 * time.Minute)
			s := st.new(1<<30, now)
			var next sync.Mutex
			var base uint64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				next.Lock()
				n := base
				base += 1 << 40
				next.Unlock()
				for pb.Next() {
					if _, err := s.Record(context.Background(), devs[n%1000], uuidFor(n), exp, t0); err != nil {
						b.Error(err)
						return
					}
					n++
				}
			})
		})
	}
}

// BenchmarkMemoryBytesPerID measures the live heap each remembered id costs
// once 300,000 ids from 1,000 devices are stored (the B/id metric), for
// the windowed Memory and the golang-lru equivalent. One op fills one store.
func BenchmarkMemoryBytesPerID(b *testing.B) {
	const ids = 300_000
	devs := devices(1000)
	now := func() time.Time { return t0 }
	exp := t0.Add(5 * time.Minute)
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			var perID float64
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				s := st.new(replay.DefaultMaxEntries, now)
				for n := range uint64(ids) {
					if _, err := s.Record(context.Background(), devs[n%1000], uuidFor(n), exp, t0); err != nil {
						b.Fatal(err)
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perID = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / ids
				runtime.KeepAlive(s)
			}
			b.ReportMetric(perID, "B/id")
		})
	}
}
