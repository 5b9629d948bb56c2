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
		g.noteKey("d", tc.used)
		if got := g.replyKey("d"); got != tc.want {
			t.Fatalf("after key %d: reply key %d, want %d", tc.used, got, tc.want)
		}
	}
	if got := g.replyKey("other"); got != 0 {
		t.Fatalf("another device: %d", got)
	}
}
