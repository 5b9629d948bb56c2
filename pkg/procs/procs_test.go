package procs

import (
	"math"
	"testing"
	"time"
)

var w = DefaultConfig().Window

// at is a window of the given load in cores, with a scheduling p90.
func at(cores float64, p90 time.Duration) Sample {
	return Sample{Elapsed: w, CPU: time.Duration(cores * float64(w)), SchedP90: p90}
}

func repeat(n int, s Sample) []Sample {
	out := make([]Sample, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func TestGovernor(t *testing.T) {
	cfg := DefaultConfig()
	hold := int(cfg.Hold / w)   // windows of low load before one P
	dwell := int(cfg.Dwell / w) // windows on the default after a rise
	cases := []struct {
		name string
		in   []Sample
		want []bool // the answer after each sample; nil: only the last is checked against last
		last bool
	}{
		{name: "idle: one P only after a whole Hold",
			in:   repeat(hold, at(0.01, 0)),
			want: append(make([]bool, hold-1), true)},
		{name: "a busy window restarts the Hold",
			in:   append(append(repeat(hold-1, at(0.1, 0)), at(0.9, 0)), repeat(hold-1, at(0.1, 0))...),
			last: false},
		{name: "1,000 msg/s on two Ps (0.45 cores) goes to one P",
			in: repeat(hold, at(0.45, 0)), last: true},
		{name: "and stays there at its one-P cost (0.35)",
			in: append(repeat(hold, at(0.45, 0)), repeat(100, at(0.35, 0))...), last: true},
		{name: "saturation on one P (CPU) gives the default back at once",
			in:   append(repeat(hold, at(0.1, 0)), at(0.68, 0)),
			want: append(append(make([]bool, hold-1), true), false)},
		{name: "a queue on one P (scheduling latency) gives it back too",
			in: append(repeat(hold, at(0.1, 0)), at(0.3, 5*time.Millisecond)), last: false},
		{name: "a backlog on one P gives it back too (a machine whose cores are taken: little CPU, no latency)",
			in: append(repeat(hold, at(0.1, 0)), Sample{Elapsed: w, CPU: w * 35 / 100, Backlog: 500}), last: false},
		{name: "a small backlog on one P (a burst of a few) is no reason",
			in: append(repeat(hold, at(0.1, 0)), Sample{Elapsed: w, CPU: w * 35 / 100, Backlog: 20}), last: true},
		{name: "a backlog on the default keeps it there, however little CPU",
			in: repeat(100, Sample{Elapsed: w, CPU: w / 10, Backlog: 500}), last: false},
		{name: "waiting for a CPU on one P (other processes hold the cores) gives it back",
			in: append(repeat(hold, at(0.1, 0)), Sample{Elapsed: w, CPU: w * 35 / 100, Waited: w * 60 / 100}), last: false},
		{name: "the run-queue wait of a steady rate on the rig (0.3) is no reason",
			in: append(repeat(hold, at(0.1, 0)), repeat(20, Sample{Elapsed: w, CPU: w * 33 / 100, Waited: w * 30 / 100})...), last: true},
		{name: "waiting for a CPU on the default is no reason to stay (more threads wait there)",
			in: repeat(hold, Sample{Elapsed: w, CPU: w / 5, Waited: w * 80 / 100}), last: true},
		{name: "1,000 msg/s on two Ps at its highest (0.50 cores) goes to one P",
			in: repeat(hold, at(0.50, 0)), last: true},
		{name: "scheduling latency on the default is no reason to go down",
			in: repeat(hold, at(0.1, 5*time.Millisecond)), last: true},
		{name: "after a rise, the Dwell holds the default even when idle",
			in:   append(append(repeat(hold, at(0.1, 0)), at(0.9, 0)), repeat(dwell, at(0.0, 0))...),
			last: false},
		{name: "after the Dwell and a Hold, one P again",
			in:   append(append(repeat(hold, at(0.1, 0)), at(0.9, 0)), repeat(dwell+hold, at(0.0, 0))...),
			last: true},
		{name: "a load between the thresholds on the default stays there",
			in: repeat(100, at(0.55, 0)), last: false},
		{name: "a load between the thresholds on one P stays there",
			in: append(repeat(hold, at(0.1, 0)), repeat(100, at(0.55, 0))...), last: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGovernor(cfg)
			var got bool
			for i, s := range tc.in {
				got = g.Next(s)
				if tc.want != nil && got != tc.want[i] {
					t.Fatalf("window %d (%.2f cores, p90 %v): one P = %v, want %v", i, s.Cores(), s.SchedP90, got, tc.want[i])
				}
			}
			if tc.want == nil && got != tc.last {
				t.Fatalf("after %d windows: one P = %v, want %v", len(tc.in), got, tc.last)
			}
			if got != g.One() {
				t.Fatalf("Next said %v, One says %v", got, g.One())
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	buckets := []float64{math.Inf(-1), 0.0001, 0.001, 0.01, math.Inf(1)}
	cases := []struct {
		name         string
		counts, prev []uint64
		want         time.Duration
	}{
		{"first read has nothing to compare", []uint64{100, 0, 0, 0}, nil, 0},
		{"too few new observations", []uint64{10, 5, 0, 0}, []uint64{0, 0, 0, 0}, 0},
		{"most are fast: the first bucket (-Inf) reads 0", []uint64{1000, 10, 0, 0}, []uint64{0, 0, 0, 0}, 0},
		{"p90 in the last bucket (10 ms and up)", []uint64{50, 0, 0, 60}, []uint64{0, 0, 0, 0}, 10 * time.Millisecond},
		{"only what was added since the last read counts", []uint64{1100, 0, 0, 900}, []uint64{1000, 0, 0, 0}, 10 * time.Millisecond},
		{"p90 in the 1–10 ms bucket", []uint64{10, 0, 100, 0}, []uint64{0, 0, 0, 0}, time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.counts, tc.prev, buckets, 0.9); got != tc.want {
				t.Fatalf("p90 = %v, want %v", got, tc.want)
			}
		})
	}
}
