package tick

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestAligned: tickers of 1 s, 2 s and 250 ms made at different moments
// tick on the same instants once aligned (in a synctest bubble, so the
// clock is exact).
func TestAligned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)) + 130*time.Millisecond) // 130 ms past a second
		a, stopA := Aligned(time.Second)
		defer stopA()
		time.Sleep(410 * time.Millisecond)
		b, stopB := Aligned(2 * time.Second)
		defer stopB()
		time.Sleep(77 * time.Millisecond)
		c, stopC := Aligned(250 * time.Millisecond)
		defer stopC()

		var at []time.Time
		for range 3 {
			at = append(at, <-a.C)
		}
		for i, ts := range at {
			if ts.Truncate(time.Second) != ts {
				t.Fatalf("1 s tick %d at %v: not on a second", i, ts.Format(time.StampMicro))
			}
		}
		tb := <-b.C
		if tb.Truncate(2*time.Second) != tb {
			t.Fatalf("2 s tick at %v: not on an even second", tb.Format(time.StampMicro))
		}
		for range 8 {
			if tc := <-c.C; tc.Truncate(250*time.Millisecond) != tc {
				t.Fatalf("250 ms tick at %v: not on a quarter second", tc.Format(time.StampMicro))
			}
		}
	})
}

// TestAlignedFirstTick: the first tick comes no sooner than d and no later
// than 2d after the ticker was made, and stop stops it.
func TestAlignedFirstTick(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, off := range []time.Duration{0, time.Millisecond, 500 * time.Millisecond, 999 * time.Millisecond} {
			time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)) + off)
			made := time.Now()
			tk, stop := Aligned(time.Second)
			first := <-tk.C
			if d := first.Sub(made); d < time.Second-time.Millisecond || d > 2*time.Second {
				t.Errorf("made %v past a second: first tick after %v", off, d)
			}
			stop()
			time.Sleep(3 * time.Second)
			select {
			case ts := <-tk.C:
				t.Errorf("made %v past a second: tick at %v after stop", off, ts.Sub(made))
			default:
			}
		}
	})
}
