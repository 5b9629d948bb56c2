package replay_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

var t0 = time.Unix(1727712000, 0)

// clock is a settable test clock.
type clock struct{ now atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.now.Store(t.Unix())
	return c
}

func (c *clock) Now() time.Time      { return time.Unix(c.now.Load(), 0) }
func (c *clock) Set(t time.Time)     { c.now.Store(t.Unix()) }
func (c *clock) Add(d time.Duration) { c.now.Add(int64(d / time.Second)) }
func idN(n uint64) (id [16]byte)     { binary.BigEndian.PutUint64(id[8:], n); return id }
func sec(n int) time.Duration        { return time.Duration(n) * time.Second }
func at(c *clock, d int) time.Time   { return c.Now().Add(sec(d)) }
func ctx() context.Context           { return context.Background() }
func record(t *testing.T, m *mem, dev string, id [16]byte, exp time.Time) bool {
	t.Helper()
	dup, err := m.Record(ctx(), dev, id, exp)
	if err != nil {
		t.Fatalf("Record(%s, %x): %v", dev, id, err)
	}
	return dup
}

// mem is a Memory whose Records are given the test clock's now, as the
// validator gives its one reading of the clock.
type mem struct {
	*replay.Memory
	c *clock
}

func newMem(maxEntries int, c *clock) *mem {
	return &mem{Memory: replay.New(replay.Config{MaxEntries: maxEntries}), c: c}
}

func (m *mem) now() time.Time {
	if m.c == nil {
		return time.Now()
	}
	return m.c.Now()
}

func (m *mem) Record(ctx context.Context, dev string, id [16]byte, exp time.Time) (bool, error) {
	return m.Memory.Record(ctx, dev, id, exp, m.now())
}

func TestMemoryRecord(t *testing.T) {
	type step struct {
		advance int // seconds to move the clock first
		dev     string
		id      uint64
		expires int // seconds after the (advanced) clock
		dup     bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first time is new", []step{{0, "a", 1, 300, false}}},
		{"second time is a duplicate", []step{{0, "a", 1, 300, false}, {0, "a", 1, 300, true}}},
		{"other id is new", []step{{0, "a", 1, 300, false}, {0, "a", 2, 300, false}}},
		{"same id on another device is new", []step{{0, "a", 1, 300, false}, {0, "b", 1, 300, false}, {0, "b", 1, 300, true}}},
		{"still a duplicate at expiry", []step{{0, "a", 1, 10, false}, {10, "a", 1, 300, true}}},
		{"new again one second after expiry", []step{{0, "a", 1, 10, false}, {11, "a", 1, 300, false}, {0, "a", 1, 300, true}}},
		{"expired id re-recorded with a new expiry", []step{{0, "a", 1, 10, false}, {11, "a", 1, 100, false}, {99, "a", 1, 0, true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock(t0)
			m := newMem(100, c)
			for i, s := range tc.steps {
				c.Add(sec(s.advance))
				if got := record(t, m, s.dev, idN(s.id), at(c, s.expires)); got != s.dup {
					t.Fatalf("step %d: dup = %v, want %v", i, got, s.dup)
				}
			}
		})
	}
}

func TestMemoryFullNeverEvictsLiveIDs(t *testing.T) {
	c := newClock(t0)
	m := newMem(3, c)
	for i := range 3 {
		record(t, m, "a", idN(uint64(i)), at(c, 300))
	}
	for i := range 5 {
		_, err := m.Record(ctx(), "a", idN(uint64(100+i)), at(c, 300))
		if !errors.Is(err, validate.ErrReplayFull) {
			t.Fatalf("Record into a full store = %v, want ErrReplayFull", err)
		}
	}
	if m.FullRejections() != 5 || m.Len() != 3 {
		t.Fatalf("FullRejections = %d, Len = %d; want 5, 3", m.FullRejections(), m.Len())
	}
	for i := range 3 { // every live id is still remembered
		if !record(t, m, "a", idN(uint64(i)), at(c, 300)) {
			t.Fatalf("live id %d was forgotten", i)
		}
	}
	// A duplicate is still detected while full, and is not a full rejection.
	if m.FullRejections() != 5 {
		t.Fatalf("FullRejections = %d after duplicates", m.FullRejections())
	}
}

// TestMemoryFullOfExpiredIDs checks that expired ids make room, whichever
// shard they sit in.
func TestMemoryFullOfExpiredIDs(t *testing.T) {
	for n := range uint64(64) { // ids landing in many different shards
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			c := newClock(t0)
			m := newMem(2, c)
			record(t, m, "a", idN(1000+n), at(c, 10))
			record(t, m, "b", idN(2000+n), at(c, 10))
			c.Add(sec(11))
			if record(t, m, "c", idN(n), at(c, 10)) {
				t.Fatal("new id reported as a duplicate")
			}
			if m.FullRejections() != 0 {
				t.Fatalf("FullRejections = %d", m.FullRejections())
			}
		})
	}
}

func TestMemoryForget(t *testing.T) {
	c := newClock(t0)
	m := newMem(10, c)
	record(t, m, "a", idN(1), at(c, 300))
	record(t, m, "b", idN(1), at(c, 300))
	if err := m.Forget(ctx(), "a", idN(1)); err != nil {
		t.Fatal(err)
	}
	if err := m.Forget(ctx(), "a", idN(99)); err != nil {
		t.Fatalf("Forget of an unknown id: %v", err)
	}
	if m.Len() != 1 {
		t.Fatalf("Len = %d, want 1", m.Len())
	}
	if record(t, m, "a", idN(1), at(c, 300)) {
		t.Fatal("forgotten id is still a duplicate")
	}
	if !record(t, m, "b", idN(1), at(c, 300)) {
		t.Fatal("Forget on device a forgot device b's id")
	}
}

func TestMemoryPrune(t *testing.T) {
	c := newClock(t0)
	m := newMem(100, c)
	for i := range 10 {
		record(t, m, "a", idN(uint64(i)), at(c, i)) // expires i seconds from now
	}
	m.Prune(at(c, 5)) // ids 0-4 expired; 5 expires exactly now and stays
	if m.Len() != 5 {
		t.Fatalf("Len after Prune = %d, want 5", m.Len())
	}
	c.Add(sec(5))
	if !record(t, m, "a", idN(5), at(c, 1)) {
		t.Fatal("id expiring this second was pruned")
	}
}

func TestMemoryDefaults(t *testing.T) {
	m := newMem(0, nil) // DefaultMaxEntries, time.Now
	if record(t, m, "a", idN(1), time.Now().Add(time.Minute)) {
		t.Fatal("fresh store reported a duplicate")
	}
	if !record(t, m, "a", idN(1), time.Now().Add(time.Minute)) {
		t.Fatal("duplicate not detected with the real clock")
	}
}

// TestMemoryConcurrent records the same ids from many goroutines: each is
// new exactly once.
func TestMemoryConcurrent(t *testing.T) {
	c := newClock(t0)
	m := newMem(0, c)
	const ids, workers = 500, 8
	var news atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range ids {
				dup, err := m.Record(ctx(), "dev", idN(uint64(i)), at(c, 300))
				if err != nil {
					t.Error(err)
					return
				}
				if !dup {
					news.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if news.Load() != ids || m.Len() != ids {
		t.Fatalf("new = %d, Len = %d, want %d", news.Load(), m.Len(), ids)
	}
}

// TestMemoryDeviceQuota: one device at replay.max_entries_per_device gets
// ErrQuotaExceeded and nobody else does; its expired or forgotten ids free
// its quota; duplicates are still detected at quota; Restore (the rebuild
// at start) is not held to it.
func TestMemoryDeviceQuota(t *testing.T) {
	c := newClock(t0)
	m := replay.New(replay.Config{MaxEntries: 1000, MaxEntriesPerDevice: 3})
	rec := func(dev string, n uint64, exp int) error {
		_, err := m.Record(ctx(), dev, idN(n), at(c, exp), c.Now())
		return err
	}
	for i := range 3 {
		if err := rec("a", uint64(i), 10+i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 { // ids in every shard
		if err := rec("a", uint64(100+i), 300); !errors.Is(err, validate.ErrQuotaExceeded) {
			t.Fatalf("device a over quota: %v, want ErrQuotaExceeded", err)
		}
	}
	if m.QuotaRejections() != 50 || m.DeviceLen("a") != 3 || m.Len() != 3 {
		t.Fatalf("QuotaRejections %d, DeviceLen %d, Len %d", m.QuotaRejections(), m.DeviceLen("a"), m.Len())
	}
	if dup, err := m.Record(ctx(), "a", idN(0), at(c, 10), c.Now()); !dup || err != nil {
		t.Fatalf("duplicate at quota: %v, %v", dup, err)
	}
	for i := range 3 {
		if err := rec("b", uint64(i), 300); err != nil {
			t.Fatalf("device b refused for a's quota: %v", err)
		}
	}
	if err := m.Forget(ctx(), "a", idN(2)); err != nil {
		t.Fatal(err)
	}
	if err := rec("a", 200, 300); err != nil {
		t.Fatalf("after Forget: %v", err)
	}
	c.Add(sec(11)) // id 0 (expiry +10) is gone, id 1 expires this second
	if err := rec("a", 201, 300); err != nil {
		t.Fatalf("after an id expired: %v", err)
	}
	if err := rec("a", 202, 300); !errors.Is(err, validate.ErrQuotaExceeded) {
		t.Fatalf("quota full again: %v", err)
	}
	if err := m.Restore("a", idN(300), at(c, 300), c.Now()); err != nil {
		t.Fatalf("Restore past the quota: %v", err)
	}
	if m.DeviceLen("a") != 4 {
		t.Fatalf("DeviceLen after Restore = %d, want 4", m.DeviceLen("a"))
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg replay.Config
		ok  bool
	}{
		{replay.DefaultConfig(), true},
		{replay.Config{MaxEntries: 1000, MaxEntriesPerDevice: 0}, true},
		{replay.Config{MaxEntries: 1000, MaxEntriesPerDevice: 1000}, true},
		{replay.Config{MaxEntries: 1000, MaxEntriesPerDevice: 1001}, false},
		{replay.Config{MaxEntries: 1000, MaxEntriesPerDevice: -1}, false},
		{replay.Config{MaxEntries: 999}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok %v", tc.cfg, err, tc.ok)
		}
	}
}

// TestMemoryHorizon: once ids expiring before T were pruned, an id
// expiring before T may have been forgotten, so after a backward clock
// step a copy of it is refused as a duplicate, not accepted as new; ids
// expiring at or after the horizon are judged as usual. SetHorizon does
// the same for ids the outbox pruned before a restart.
func TestMemoryHorizon(t *testing.T) {
	m := replay.New(replay.Config{MaxEntries: 1000})
	if dup, _ := m.Record(ctx(), "a", idN(1), t0.Add(sec(10)), t0); dup {
		t.Fatal("first record is a duplicate")
	}
	m.Prune(t0.Add(sec(20))) // id 1 (expiry +10) is forgotten
	// The clock steps back to t0+5: the copy is fresh again.
	if dup, _ := m.Record(ctx(), "a", idN(1), t0.Add(sec(10)), t0.Add(sec(5))); !dup {
		t.Fatal("copy of a pruned id accepted after a backward clock step")
	}
	if dup, _ := m.Record(ctx(), "a", idN(2), t0.Add(sec(20)), t0.Add(sec(5))); dup {
		t.Fatal("an id expiring at the horizon refused")
	}
	m2 := replay.New(replay.Config{MaxEntries: 1000})
	m2.SetHorizon(t0.Add(sec(100)))
	if dup, _ := m2.Record(ctx(), "a", idN(1), t0.Add(sec(99)), t0); !dup {
		t.Fatal("id expiring before SetHorizon accepted")
	}
	if err := m2.Restore("a", idN(3), t0.Add(sec(50)), t0); err != nil {
		t.Fatalf("Restore below the horizon: %v", err)
	}
}
