package gateway

import "testing"

// TestUsedKeyKeepsNewest: replies follow the newest key a device has used;
// an old-key message in flight after a rotation does not move them back.
func TestUsedKeyKeepsNewest(t *testing.T) {
	g := &Gateway{}
	if got := g.replyKey("d"); got != 0 {
		t.Fatalf("before any message: %d, want 0 (newest valid key)", got)
	}
	for _, tc := range []struct {
		used, want int64
	}{{1, 1}, {2, 2}, {1, 2}, {3, 3}, {2, 3}} {
		g.noteKey("d", tc.used, 3)
		if got := g.replyKey("d"); got != tc.want {
			t.Fatalf("after key %d: reply key %d, want %d", tc.used, got, tc.want)
		}
	}
	if got := g.replyKey("other"); got != 0 {
		t.Fatalf("another device: %d", got)
	}
}

// TestUsedKeyForgetsRemovedRegistration: a device removed and registered
// again starts over at key 1. The key id remembered from the old
// registration (3, which no longer exists) must not stick: replies follow
// the key the device uses now, also once a rotation adds key 2 and the
// device has not switched to it yet.
func TestUsedKeyForgetsRemovedRegistration(t *testing.T) {
	g := &Gateway{}
	g.noteKey("d", 3, 3) // the old registration's newest key
	g.noteKey("d", 1, 1) // registered again: keys {1}
	if got := g.replyKey("d"); got != 1 {
		t.Fatalf("after re-registration: reply key %d, want 1", got)
	}
	g.noteKey("d", 1, 2) // rotated: keys {1, 2}, the device still on 1
	if got := g.replyKey("d"); got != 1 {
		t.Fatalf("during the overlap: reply key %d, want 1 (the device has not used key 2)", got)
	}
}
