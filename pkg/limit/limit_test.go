package limit

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_000, 0)

func TestDevicesBucket(t *testing.T) {
	d := NewDevices(10, 20) // 10/s, burst 20
	allowed := 0
	for range 100 { // a burst at one instant: exactly the bucket
		if d.Allow("flood", t0) {
			allowed++
		}
	}
	if allowed != 20 {
		t.Fatalf("burst: allowed %d, want 20", allowed)
	}
	if !d.Allow("quiet", t0) {
		t.Fatal("another device is limited by the flooder's bucket")
	}
	// One second later, 10 more tokens; 100 ms later, one.
	allowed = 0
	for range 100 {
		if d.Allow("flood", t0.Add(time.Second)) {
			allowed++
		}
	}
	if allowed != 10 {
		t.Fatalf("after 1s: allowed %d, want 10", allowed)
	}
	if !d.Allow("flood", t0.Add(1100*time.Millisecond)) || d.Allow("flood", t0.Add(1100*time.Millisecond)) {
		t.Fatal("after 100 ms: want exactly one token")
	}
	if got := d.Limited(); got != 80+90+1 {
		t.Fatalf("Limited = %d, want 171", got)
	}
	if got := d.LimitedDevices(t0.Add(2*time.Second), 5*time.Second); got != 1 {
		t.Fatalf("LimitedDevices = %d, want 1", got)
	}
	if got := d.LimitedDevices(t0.Add(time.Minute), 5*time.Second); got != 0 {
		t.Fatalf("LimitedDevices a minute later = %d, want 0", got)
	}
}

func TestDevicesOffAndBounded(t *testing.T) {
	off := NewDevices(0, 0)
	for range 1000 {
		if !off.Allow("x", t0) {
			t.Fatal("rate 0 must turn the limit off")
		}
	}
	d := NewDevices(1, 1)
	for i := range MaxTracked + 100 {
		d.Allow(fmt.Sprintf("dev%d", i), t0)
	}
	if n := d.Tracked(); n != MaxTracked {
		t.Fatalf("Tracked = %d, want the bound %d", n, MaxTracked)
	}
}

func TestNotices(t *testing.T) {
	off := NewNotices(0)
	for i := range 2 { // the second call, at the same instant, is the one a limit would refuse
		if !off.Allow("x", "stale", t0) {
			t.Fatalf("notice_interval 0 must answer every rejection: call %d refused", i+1)
		}
	}
	n := NewNotices(time.Second)
	sent := 0
	// 10,000 rejections over 10 s, two reasons: at most one notice per
	// second and reason.
	for i := range 10000 {
		now := t0.Add(time.Duration(i) * time.Millisecond)
		if n.Allow("flood", "rate_limited", now) {
			sent++
		}
		if i%2 == 0 && n.Allow("flood", "stale", now) {
			sent++
		}
	}
	if sent != 20 {
		t.Fatalf("sent %d notices, want 20 (10 s × 2 reasons)", sent)
	}
	if got := n.Suppressed(); got != 10000+5000-20 {
		t.Fatalf("Suppressed = %d, want %d", got, 15000-20)
	}
	if !n.Allow("other", "rate_limited", t0.Add(time.Millisecond)) {
		t.Fatal("another device's notice was suppressed")
	}
}

func TestQuarantine(t *testing.T) {
	tests := []struct {
		name  string
		after int
		gaps  []time.Duration // between successive bad signatures
		trips []int           // indexes (0-based) of the rejections that trip
	}{
		{"off", 0, []time.Duration{0, 0, 0, 0}, nil},
		{"three quickly", 3, []time.Duration{0, time.Second, time.Second}, []int{2}},
		{"three too slowly", 3, []time.Duration{0, 40 * time.Second, 40 * time.Second, 40 * time.Second}, nil},
		{"slow then fast", 3, []time.Duration{0, 70 * time.Second, 70 * time.Second, time.Second, time.Second}, []int{4}},
		{"trips again after another N", 2, []time.Duration{0, 1, 1, 1, 1}, []int{1, 3}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := NewQuarantine(tc.after, time.Minute)
			now := t0
			var got []int
			for i, g := range tc.gaps {
				now = now.Add(g)
				if q.BadSignature("dev", now) {
					got = append(got, i)
				}
				q.BadSignature("bystander", now.Add(-time.Hour)) // other devices count apart
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.trips) {
				t.Fatalf("tripped at %v, want %v", got, tc.trips)
			}
			if q.Trips() < int64(len(tc.trips)) {
				t.Fatalf("Trips = %d", q.Trips())
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		mut  func(*Config)
		key  string
	}{
		{"negative rate", func(c *Config) { c.DeviceRate = -1 }, "limits.device_rate"},
		{"zero burst", func(c *Config) { c.DeviceBurst = 0 }, "limits.device_burst"},
		{"negative quarantine", func(c *Config) { c.QuarantineAfter = -1 }, "limits.quarantine_after"},
		{"no window", func(c *Config) { c.QuarantineAfter = 5; c.QuarantineWindow = 0 }, "limits.quarantine_window"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mut(&c)
			err := c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tc.key+":") {
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.key)
			}
		})
	}
	off := DefaultConfig()
	off.DeviceRate, off.DeviceBurst = 0, 0
	if err := off.Validate(); err != nil {
		t.Fatalf("rate 0 (off) with burst 0: %v", err)
	}
}
