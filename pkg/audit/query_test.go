package audit

import (
	"context"
	"testing"
	"time"
)

// TestFindAndSummarize: on each engine, Find filters by device, reason
// and time, newest n, oldest first; Summarize sums folded counts by action
// and reason, most recent first.
func TestFindAndSummarize(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		ctx := context.Background()
		l, _ := e.open(t)
		at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
		entries := []*Entry{
			{At: at(1), Actor: "cli:op", Device: "d1", Action: "device.add"},
			{At: at(2), Actor: "gateway", Device: "d1", Action: "reject", Reason: "stale", Count: 3},
			{At: at(3), Actor: "gateway", Device: "d2", Action: "reject", Reason: "bad_signature"},
			{At: at(4), Actor: "gateway", Device: "d1", Action: "reject", Reason: "bad_signature", Count: 2},
			{At: at(5), Actor: "gateway", Device: "d1", Action: "reject", Reason: "stale"},
			{At: at(6), Actor: "gateway", Device: "d1", Action: "quarantine", Reason: "bad_signature", Count: 5},
		}
		if err := l.Append(ctx, entries...); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name string
			f    Filter
			n    int
			want []int64 // seqs
		}{
			{"all, newest 2", Filter{}, 2, []int64{5, 6}},
			{"device", Filter{Device: "d1"}, 10, []int64{1, 2, 4, 5, 6}},
			{"reason", Filter{Reason: "bad_signature"}, 10, []int64{3, 4, 6}},
			{"device and reason", Filter{Device: "d1", Reason: "stale"}, 10, []int64{2, 5}},
			{"since", Filter{Device: "d1", Since: at(4)}, 10, []int64{4, 5, 6}},
			{"none", Filter{Device: "d3"}, 10, nil},
		}
		for _, tc := range tests {
			got, err := l.Find(ctx, tc.f, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			var seqs []int64
			for _, e := range got {
				seqs = append(seqs, e.Seq)
			}
			if len(seqs) != len(tc.want) {
				t.Fatalf("%s: seqs %v, want %v", tc.name, seqs, tc.want)
			}
			for i := range seqs {
				if seqs[i] != tc.want[i] {
					t.Fatalf("%s: seqs %v, want %v", tc.name, seqs, tc.want)
				}
			}
		}
		sum, err := l.Summarize(ctx, Filter{Device: "d1"})
		if err != nil {
			t.Fatal(err)
		}
		want := []Tally{
			{"quarantine", "bad_signature", 5, at(6)},
			{"reject", "stale", 4, at(5)},
			{"reject", "bad_signature", 2, at(4)},
			{"device.add", "", 1, at(1)},
		}
		if len(sum) != len(want) {
			t.Fatalf("summary %+v, want %+v", sum, want)
		}
		for i := range want {
			if sum[i].Action != want[i].Action || sum[i].Reason != want[i].Reason || sum[i].Count != want[i].Count || !sum[i].Last.Equal(want[i].Last) {
				t.Fatalf("summary[%d] = %+v, want %+v", i, sum[i], want[i])
			}
		}
	})
}
