package gateway

import (
	"sync"
	"testing"
)

// TestDeviceQuota: a device at outbox.max_pending_per_device is refused
// and others are not; releasing a row frees one; forced rows (reloaded at
// start) count even past the quota; 0 turns it off.
func TestDeviceQuota(t *testing.T) {
	q := newDeviceQuota(3)
	for i := range 3 {
		if !q.take("a") {
			t.Fatalf("take %d refused under quota", i)
		}
	}
	if q.take("a") {
		t.Fatal("take past the quota allowed")
	}
	if !q.take("b") {
		t.Fatal("device b refused for device a's quota")
	}
	q.release("a")
	if !q.take("a") || q.take("a") {
		t.Fatal("release did not free exactly one row")
	}
	q.force("a")
	if q.held("a") != 4 || q.take("a") {
		t.Fatalf("after force: held %d", q.held("a"))
	}
	off := newDeviceQuota(0)
	for range 1000 {
		if !off.take("a") {
			t.Fatal("quota 0 refused")
		}
	}
	// Concurrent takes never exceed the quota.
	c := newDeviceQuota(50)
	var wg sync.WaitGroup
	var mu sync.Mutex
	granted := 0
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if c.take("x") {
					mu.Lock()
					granted++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if granted != 50 || c.held("x") != 50 {
		t.Fatalf("granted %d, held %d; want 50", granted, c.held("x"))
	}
}
