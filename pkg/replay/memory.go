package replay

import (
	"context"
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/pkg/validate"
)

const shards = 32

// DefaultMaxEntries bounds Memory when no size is given: 2,000,000 ids,
// about 10 min of 3,300 msg/s, roughly 64 MB at the measured ~30 B/id.
const DefaultMaxEntries = 2_000_000

// Memory is an in-memory, sharded, windowed ReplayStore.
//
// Each remembered id costs one map slot: a 16-byte key (the message UUID
// mixed with a keyed hash of the device id, so devices cannot collide) and a
// 4-byte expiry in seconds. With the map's control bytes and load factor
// that measures about 25-45 bytes per id (BenchmarkMemoryBytesPerID); see
// docs/PERFORMANCE.md.
type Memory struct {
	max    int64
	now    func() time.Time
	count  atomic.Int64
	full   atomic.Int64
	seed   maphash.Seed
	shards [shards]memShard
}

type key [16]byte

type memShard struct {
	mu        sync.Mutex
	m         map[key]uint32 // key → expiry, Unix seconds
	nextPrune uint32
	_         [40]byte // keep shards on separate cache lines
}

// NewMemory returns a store that remembers at most maxEntries ids
// (DefaultMaxEntries when maxEntries ≤ 0). now is the clock (time.Now).
// The bound is checked per shard under that shard's lock against a shared
// count, so concurrent callers recording in different shards can overshoot
// it by at most their number (the gateway's pipeline.workers); it never
// evicts a live id to stay under it.
func NewMemory(maxEntries int, now func() time.Time) *Memory {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	if now == nil {
		now = time.Now
	}
	m := &Memory{max: int64(maxEntries), now: now, seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].m = make(map[key]uint32)
	}
	return m
}

func (m *Memory) key(deviceID string, id [16]byte) key {
	h := maphash.String(m.seed, deviceID)
	var k key = id
	binary.LittleEndian.PutUint64(k[:8], binary.LittleEndian.Uint64(id[:8])^h)
	return k
}

// Record implements validate.ReplayStore. It never blocks on I/O.
func (m *Memory) Record(_ context.Context, deviceID string, id [16]byte, expires time.Time) (bool, error) {
	k := m.key(deviceID, id)
	exp := expSeconds(expires)
	now := expSeconds(m.now())
	s := &m.shards[k[15]%shards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[k]; ok && e >= now {
		return true, nil
	}
	if now >= s.nextPrune {
		m.pruneLocked(s, now)
	}
	if m.count.Load() >= m.max {
		m.pruneLocked(s, now)
		if m.count.Load() >= m.max {
			m.pruneOthers(s, now)
		}
		if m.count.Load() >= m.max {
			m.full.Add(1)
			return false, validate.ErrReplayFull
		}
	}
	if _, ok := s.m[k]; !ok {
		m.count.Add(1)
	}
	s.m[k] = exp
	return false, nil
}

// Forget implements validate.ReplayStore.
func (m *Memory) Forget(_ context.Context, deviceID string, id [16]byte) error {
	k := m.key(deviceID, id)
	s := &m.shards[k[15]%shards]
	s.mu.Lock()
	if _, ok := s.m[k]; ok {
		delete(s.m, k)
		m.count.Add(-1)
	}
	s.mu.Unlock()
	return nil
}

// Len returns how many ids are remembered (expired ones not yet pruned included).
func (m *Memory) Len() int { return int(m.count.Load()) }

// FullRejections returns how many ids were refused because the store was full.
func (m *Memory) FullRejections() int64 { return m.full.Load() }

// Prune forgets every expired id now, rather than lazily.
func (m *Memory) Prune(now time.Time) {
	n := expSeconds(now)
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		m.pruneLocked(s, n)
		s.mu.Unlock()
	}
}

// pruneLocked deletes expired entries of s. Each shard prunes at most once
// per second of its own accord, so the cost is amortised over many Records.
func (m *Memory) pruneLocked(s *memShard, now uint32) {
	var n int64
	for k, e := range s.m {
		if e < now {
			delete(s.m, k)
			n++
		}
	}
	m.count.Add(-n)
	s.nextPrune = now + 1
}

// pruneOthers prunes every shard but held that is due (each at most once a
// second) and not busy. It runs only when the store is full, so that
// expired ids in any shard make room; TryLock keeps the rule that a
// goroutine waits for one shard lock at a time.
func (m *Memory) pruneOthers(held *memShard, now uint32) {
	for i := range m.shards {
		o := &m.shards[i]
		if o == held || !o.mu.TryLock() {
			continue
		}
		if now >= o.nextPrune {
			m.pruneLocked(o, now)
		}
		o.mu.Unlock()
	}
}

func expSeconds(t time.Time) uint32 {
	u := t.Unix()
	if u < 0 {
		return 0
	}
	if u > int64(^uint32(0)) {
		return ^uint32(0)
	}
	return uint32(u)
}

var _ validate.ReplayStore = (*Memory)(nil)
