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
// mixed with a keyed hash of the device id, so devices cannot collide) and
// an 8-byte value (the expiry in seconds and the device's quota slot). With
// the map's control bytes and load factor that measured about 25-45 bytes
// per id with a 4-byte value (BenchmarkMemoryBytesPerID; see
// docs/PERFORMANCE.md); the quota slot adds 4 bytes per slot, not
// re-measured.
//
// Memory never reads a clock: every Record is given the instant its
// message was judged fresh at, so the freshness check and the replay
// window cannot disagree (issue 9, finding 3).
type Memory struct {
	max       int64
	perDevice int32 // 0: no per-device quota
	count     atomic.Int64
	full      atomic.Int64
	quota     atomic.Int64
	horizon   atomic.Uint32 // ids expiring before it may have been pruned
	seed      maphash.Seed
	shards    [shards]memShard
	devs      devSlots
}

type key [16]byte

// entry is a remembered id: its expiry and the quota slot of its device
// (0 when per-device quotas are off).
type entry struct {
	exp  uint32 // Unix seconds
	slot uint32
}

type memShard struct {
	mu        sync.Mutex
	m         map[key]entry
	nextPrune uint32
	_         [40]byte // keep shards on separate cache lines
}

// NewMemory returns a store that remembers at most maxEntries ids
// (DefaultMaxEntries when maxEntries ≤ 0), with no per-device quota: New
// with only Config.MaxEntries. The clock argument is ignored (Record is
// given now); it stays for callers written before.
func NewMemory(maxEntries int, _ func() time.Time) *Memory {
	return New(Config{MaxEntries: maxEntries})
}

// New returns a store bounded by cfg.MaxEntries ids in all
// (DefaultMaxEntries when ≤ 0) and cfg.MaxEntriesPerDevice ids per device
// (none when 0). The fleet-wide bound is checked per shard under that
// shard's lock against a shared count, so concurrent callers recording in
// different shards can overshoot it by at most their number (the gateway's
// pipeline.workers); the per-device bound likewise by the callers recording
// for one device at once (one in the gateway, whose workers are sharded by
// device). It never evicts a live id to stay under either.
func New(cfg Config) *Memory {
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	m := &Memory{max: int64(cfg.MaxEntries), perDevice: int32(min(max(cfg.MaxEntriesPerDevice, 0), 1<<30)), seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].m = make(map[key]entry)
	}
	return m
}

func (m *Memory) key(deviceID string, id [16]byte) key {
	h := maphash.String(m.seed, deviceID)
	var k key = id
	binary.LittleEndian.PutUint64(k[:8], binary.LittleEndian.Uint64(id[:8])^h)
	return k
}

// Record implements validate.ReplayStore. It never blocks on I/O. An id
// whose expiry is at or after now is live: a copy is a duplicate.
func (m *Memory) Record(_ context.Context, deviceID string, id [16]byte, expires, now time.Time) (bool, error) {
	return m.record(deviceID, id, expires, now, true)
}

// Restore remembers an id that was accepted before (the rebuild from the
// outbox at start). It is Record without the per-device quota and the
// horizon: an id already accepted must be remembered even if its device is
// over quota.
// It still refuses with validate.ErrReplayFull past the fleet-wide bound.
func (m *Memory) Restore(deviceID string, id [16]byte, expires, now time.Time) error {
	_, err := m.record(deviceID, id, expires, now, false)
	return err
}

func (m *Memory) record(deviceID string, id [16]byte, expires, now time.Time, quota bool) (bool, error) {
	k := m.key(deviceID, id)
	exp, n := expSeconds(expires), expSeconds(now)
	var slot uint32
	var cnt *atomic.Int32
	if m.perDevice > 0 {
		slot, cnt = m.devs.get(deviceID)
	}
	if quota && exp < m.horizon.Load() {
		// Ids expiring before the horizon were pruned: this one may have
		// been accepted and forgotten (the clock stepped back, or the
		// skew was raised across a restart). Fail closed.
		return true, nil
	}
	s := &m.shards[k[15]%shards]
	s.mu.Lock()
	defer s.mu.Unlock()
	old, exists := s.m[k]
	if exists && old.exp >= n {
		return true, nil
	}
	if n >= s.nextPrune {
		m.pruneLocked(s, n)
		old, exists = s.m[k]
	}
	if quota && cnt != nil && !exists && cnt.Load() >= m.perDevice {
		// The device's expired ids may sit in shards not pruned this second.
		m.pruneOthers(s, n)
		if cnt.Load() >= m.perDevice {
			m.quota.Add(1)
			return false, validate.ErrQuotaExceeded
		}
	}
	if !exists && m.count.Load() >= m.max {
		m.pruneLocked(s, n)
		if m.count.Load() >= m.max {
			m.pruneOthers(s, n)
		}
		if m.count.Load() >= m.max {
			m.full.Add(1)
			return false, validate.ErrReplayFull
		}
		old, exists = s.m[k]
	}
	if !exists {
		m.count.Add(1)
		if cnt != nil {
			cnt.Add(1)
		}
	} else if old.slot != slot { // cannot happen: the key covers the device
		m.devs.counter(old.slot).Add(-1)
		if cnt != nil {
			cnt.Add(1)
		}
	}
	s.m[k] = entry{exp: exp, slot: slot}
	return false, nil
}

// Forget implements validate.ReplayStore.
func (m *Memory) Forget(_ context.Context, deviceID string, id [16]byte) error {
	k := m.key(deviceID, id)
	s := &m.shards[k[15]%shards]
	s.mu.Lock()
	if e, ok := s.m[k]; ok {
		delete(s.m, k)
		m.count.Add(-1)
		m.devs.counter(e.slot).Add(-1)
	}
	s.mu.Unlock()
	return nil
}

// SetHorizon declares that ids expiring before t may have been forgotten
// (the outbox pruned them before a restart): Record then reports them as
// duplicates. The horizon only moves forward; pruning moves it too.
func (m *Memory) SetHorizon(t time.Time) { m.raiseHorizon(expSeconds(t)) }

func (m *Memory) raiseHorizon(h uint32) {
	for {
		cur := m.horizon.Load()
		if h <= cur || m.horizon.CompareAndSwap(cur, h) {
			return
		}
	}
}

// Len returns how many ids are remembered (expired ones not yet pruned included).
func (m *Memory) Len() int { return int(m.count.Load()) }

// DeviceLen returns how many ids are remembered for deviceID (expired ones
// not yet pruned included); 0 when per-device quotas are off.
func (m *Memory) DeviceLen(deviceID string) int {
	if m.perDevice == 0 {
		return 0
	}
	_, c := m.devs.get(deviceID)
	if c == nil {
		return 0
	}
	return int(c.Load())
}

// FullRejections returns how many ids were refused because the store was full.
func (m *Memory) FullRejections() int64 { return m.full.Load() }

// QuotaRejections returns how many ids were refused because their device
// was at replay.max_entries_per_device.
func (m *Memory) QuotaRejections() int64 { return m.quota.Load() }

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
		if e.exp < now {
			delete(s.m, k)
			n++
			if e.slot != 0 {
				m.devs.counter(e.slot).Add(-1)
			}
		}
	}
	m.count.Add(-n)
	s.nextPrune = now + 1
	if n > 0 {
		m.raiseHorizon(now)
	}
}

// pruneOthers prunes every shard but held that is due (each at most once a
// second) and not busy. It runs only when the store or a device's quota is
// full, so that expired ids in any shard make room; TryLock keeps the rule
// that a goroutine waits for one shard lock at a time.
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

// devSlots gives each device a small integer and a counter of its ids.
// Lookups after a device's first are lock-free (sync.Map, atomic counter
// chunks); slots are never reused, so there are at most as many as devices
// that ever had a message accepted. Slot 0 means "not counted": devices
// beyond the slot table's capacity (4,194,303) are not held to a quota.
type devSlots struct {
	ids    sync.Map // device id → uint32 slot
	mu     sync.Mutex
	next   uint32 // last slot handed out
	chunks [slotChunks]atomic.Pointer[[slotChunk]atomic.Int32]
	none   atomic.Int32 // counter of slot 0, never read
}

const (
	slotChunk  = 1024
	slotChunks = 4096
)

// get returns dev's slot and counter, allocating them on first use; nil
// when the table is full.
func (d *devSlots) get(dev string) (uint32, *atomic.Int32) {
	if v, ok := d.ids.Load(dev); ok {
		s := v.(uint32)
		return s, d.counter(s)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.ids.Load(dev); ok {
		s := v.(uint32)
		return s, d.counter(s)
	}
	if d.next+1 >= slotChunk*slotChunks {
		return 0, nil
	}
	d.next++
	s := d.next
	if d.chunks[s/slotChunk].Load() == nil {
		d.chunks[s/slotChunk].Store(new([slotChunk]atomic.Int32))
	}
	d.ids.Store(dev, s)
	return s, d.counter(s)
}

// counter returns the counter of slot s (a sink for slot 0).
func (d *devSlots) counter(s uint32) *atomic.Int32 {
	if s == 0 {
		return &d.none
	}
	return &d.chunks[s/slotChunk].Load()[s%slotChunk]
}

var _ validate.ReplayStore = (*Memory)(nil)
