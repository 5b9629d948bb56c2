package perf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/test/harness"
)

// BenchmarkEndToEnd is `make bench`'s end-to-end benchmark (issue 5). Run
// it once:
//
//	go test -run '^$' -bench EndToEnd -benchtime 1x -timeout 15m ./test/perf
//
// It prints progress, then the markdown tables, and writes the results as
// JSON to $BENCH_OUT (default bench/results/<YYYY-MM-DD>.json) and
// the tables next to it (.md). $BENCH_MICRO names a file of
// `go test -bench ./pkg/...` output whose bytes-per-id figures the memory
// table cites. BENCH_PLAN=smoke runs the tiny plan of TestSmoke.
func BenchmarkEndToEnd(b *testing.B) {
	plan := DefaultPlan()
	if os.Getenv("BENCH_PLAN") == "smoke" {
		plan = SmokePlan()
	}
	var micro []Micro
	if path := os.Getenv("BENCH_MICRO"); path != "" {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		micro = ParseMicro(f)
		f.Close()
	}
	out := benchOut(b)
	plain, _ := json.Marshal(plan)
	os.Stdout.WriteString("plan: " + string(plain) + "\n")

	res := RunSuite(b, plan, os.Stdout)
	res.Micro = micro
	res.Targets = evaluate(res)
	saveResults(b, out, res, res.Markdown())
	b.ReportMetric(res.GatewayUnpaced.RepliedThroughput, "gateway-msg/s")
	b.ReportMetric(res.BrokerLimit.Throughput, "broker-msg/s")
	b.ReportMetric(res.Ratio(), "ratio")
	b.ReportMetric(res.Memory.HeapPerID, "heap-B/id")
}

// benchOut is $BENCH_OUT, default bench/results/<YYYY-MM-DD>.json.
func benchOut(b *testing.B) string {
	if out := os.Getenv("BENCH_OUT"); out != "" {
		return out
	}
	return filepath.Join(harness.RepoRoot(b), "bench", "results", time.Now().Format(time.DateOnly)+".json")
}

// saveResults writes res as JSON to out and md beside it (.json → .md),
// and prints md.
func saveResults(b *testing.B, out string, res any, md string) {
	if err := writeJSON(out, res); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(strings.TrimSuffix(out, ".json")+".md", []byte(md), 0o644); err != nil {
		b.Fatal(err)
	}
	os.Stdout.WriteString("\n" + md + "results: " + out + "\n")
}

// BenchmarkScaleOut is the scale-out benchmark (issue 11), run by
// `make bench` after BenchmarkEndToEnd and alone by `make bench-scale`:
//
//	go test -run '^$' -bench ScaleOut -benchtime 1x -timeout 10m ./test/perf
//
// One gateway on SQLite, then 1, 2 and 3 sharing a new PostgreSQL
// database (at $BENCH_PG, default DefaultPostgres) and a share group, the
// same load in each row. It prints the markdown tables and writes the
// results to $BENCH_OUT with .json replaced by .scale.json (and .scale.md);
// BENCH_PLAN=smoke runs TestScaleOutSmoke's plan.
func BenchmarkScaleOut(b *testing.B) {
	plan := DefaultScaleOutPlan()
	if os.Getenv("BENCH_PLAN") == "smoke" {
		plan = SmokeScaleOutPlan()
	}
	out := strings.TrimSuffix(benchOut(b), ".json") + ".scale.json"
	plain, _ := json.Marshal(plan)
	os.Stdout.WriteString("scale-out plan: " + string(plain) + "\n")

	res := RunScaleOut(b, plan, postgresDSN(), os.Stdout)
	saveResults(b, out, res, res.Markdown())
	for _, row := range res.Rows {
		b.ReportMetric(row.Run.RepliedThroughput, fmt.Sprintf("%s-%dgw-msg/s", row.Engine, row.Gateways))
	}
}

// BenchmarkSteady is the steady-rate benchmark (issue 18), run by `make
// bench` after BenchmarkEndToEnd and alone by `make bench-steady`:
//
//	go test -run '^$' -bench Steady -benchtime 1x -timeout 30m ./test/perf
//
// It writes $BENCH_OUT with .json replaced by .steady.json (and
// .steady.md). BENCH_STEADY_SECONDS sets each rate's length (default 30);
// BENCH_BASELINE names another iotgw binary (an earlier commit's build)
// whose gateway is measured alternately with this tree's, for a before
// and after in one run; BENCH_STEADY_PROFILE names a directory for a CPU
// profile of the gateway at each rate; BENCH_PLAN=smoke runs
// TestSteadySmoke's plan.
func BenchmarkSteady(b *testing.B) {
	plan := DefaultSteadyPlan()
	if os.Getenv("BENCH_PLAN") == "smoke" {
		plan = SmokeSteadyPlan()
	}
	out := strings.TrimSuffix(benchOut(b), ".json") + ".steady.json"
	plain, _ := json.Marshal(plan)
	os.Stdout.WriteString("steady plan: " + string(plain) + "\n")
	res := RunSteady(b, plan, os.Getenv("BENCH_BASELINE"), os.Stdout)
	saveResults(b, out, res, res.Markdown())
	for _, bd := range res.Builds {
		b.ReportMetric(bd.Unpaced.MicrosPerMessage(), bd.Name+"-unpaced-µs/msg")
		for i, pt := range plan.Points {
			b.ReportMetric(bd.Points[i].MicrosPerMessage(), fmt.Sprintf("%s-%gmsg/s-%ddev-µs/msg", bd.Name, pt.Rate, pt.Devices))
		}
		b.ReportMetric(bd.Idle.CorePercent(), bd.Name+"-idle-%core")
	}
}

// TestSteadySmoke runs every measurement of the steady-rate benchmark at
// a tiny scale, with this tree's build as its own baseline (so that the
// alternation runs too), and checks the counts. It asserts no timing.
func TestSteadySmoke(t *testing.T) {
	var progress bytes.Buffer
	p := SmokeSteadyPlan()
	res := RunSteady(t, p, harness.BuildIotgw(t), &progress)
	t.Log("\n" + progress.String())
	if len(res.Broker) != len(p.Points) || len(res.Builds) != 2 {
		t.Fatalf("%d broker runs and %d builds, want %d and 2", len(res.Broker), len(res.Builds), len(p.Points))
	}
	for _, bd := range res.Builds {
		if got, want := bd.Unpaced.Counts.Unique, int64(p.UnpacedDevices*p.UnpacedMessages); got != want || bd.Unpaced.Counts.Duplicates != 0 {
			t.Errorf("%s unpaced: counts %+v, want %d once", bd.Name, bd.Unpaced.Counts, want)
		}
		if len(bd.Points) != len(p.Points) || len(bd.Added) != len(p.Points) {
			t.Fatalf("%s: %d points, %d added latencies, want %d", bd.Name, len(bd.Points), len(bd.Added), len(p.Points))
		}
		for i, pt := range p.Points {
			r := bd.Points[i]
			want := int64(pt.Devices * p.perDevice(pt))
			if r.Counts.Unique != want || r.Counts.Duplicates != 0 || r.Latency.Samples != int(want) {
				t.Errorf("%s %+v: counts %+v, %d latency samples, want %d once", bd.Name, pt, r.Counts, r.Latency.Samples, want)
			}
			if r.CPU.GatewaySwitches <= 0 {
				t.Errorf("%s %+v: no gateway context switches counted", bd.Name, pt)
			}
		}
		if bd.Idle.Seconds <= 0 || bd.Idle.Registered != p.Registered {
			t.Errorf("%s: idle %+v", bd.Name, bd.Idle)
		}
	}
	md := res.Markdown()
	for _, h := range []string{"### 7. Steady rates", "× unpaced", "added p99", "**Idle:**", "baseline"} {
		if !strings.Contains(md, h) {
			t.Errorf("markdown lacks %q", h)
		}
	}
}

// postgresDSN returns $BENCH_PG or DefaultPostgres.
func postgresDSN() string {
	if dsn := os.Getenv("BENCH_PG"); dsn != "" {
		return dsn
	}
	return DefaultPostgres
}

// TestScaleOutSmoke runs every row of the scale-out benchmark at a tiny
// scale against the machine's PostgreSQL and checks the counts: every
// message once, accepted once, every gateway of a shared row given a
// share, and PostgreSQL's commits seen. It asserts no timing.
func TestScaleOutSmoke(t *testing.T) {
	var progress bytes.Buffer
	p := SmokeScaleOutPlan()
	res := RunScaleOut(t, p, postgresDSN(), &progress)
	t.Log("\n" + progress.String())
	if got, want := len(res.Rows), 1+len(p.Gateways); got != want {
		t.Fatalf("%d rows, want %d", got, want)
	}
	msgs := int64(p.Devices * p.Messages)
	for _, row := range res.Rows {
		rn := row.Run
		if rn.Counts.Unique != msgs || rn.Counts.Duplicates != 0 || row.Accepted() != float64(msgs) {
			t.Errorf("%s × %d: counts %+v, accepted %v, want %d once", row.Engine, row.Gateways, rn.Counts, row.Accepted(), msgs)
		}
		if row.Engine == "sqlite" {
			continue
		}
		if row.DB == nil || row.DB.Commits <= 0 || row.DB.Inserted < msgs {
			t.Errorf("postgres × %d: pg_stat_database %+v, want commits and ≥ %d rows inserted", row.Gateways, row.DB, msgs)
		}
		if row.Gateways > 1 {
			for i, c := range rn.Gateway.PerGateway {
				if c["iotgw_messages_received_total"] == 0 {
					t.Errorf("postgres × %d: gateway %d received nothing", row.Gateways, i+1)
				}
			}
			if len(rn.CPU.Gateways) != row.Gateways {
				t.Errorf("postgres × %d: %d per-gateway CPU figures", row.Gateways, len(rn.CPU.Gateways))
			}
		}
	}
	md := res.Markdown()
	for _, h := range []string{"### 6. Scale-out on PostgreSQL", "overhead, not speedup", "messages per commit", "For a capacity plan"} {
		if !strings.Contains(md, h) {
			t.Errorf("markdown lacks %q", h)
		}
	}
}

// TestSmoke runs every measurement of the benchmark at a tiny scale and
// checks the counts, so the benchmark's code keeps working between runs.
// It asserts no timing.
func TestSmoke(t *testing.T) {
	var progress bytes.Buffer
	res := RunSuite(t, SmokePlan(), &progress)
	t.Log("\n" + progress.String())
	p := SmokePlan()

	want := func(name string, r Run, messages int64, replies bool) {
		t.Helper()
		if r.Counts.Want != messages || r.Counts.Unique != messages || r.Counts.Duplicates != 0 || r.Counts.Unexpected != 0 {
			t.Errorf("%s: counts %+v, want %d exactly once", name, r.Counts, messages)
		}
		if got := len(r.Loads); got != r.Chunks {
			t.Errorf("%s: %d load summaries, want %d", name, got, r.Chunks)
		}
		for _, l := range r.Loads {
			if replies && (l.Replies == nil || l.Replies.OK != int64(l.Planned)) {
				t.Errorf("%s: replies %+v, want %d ok", name, l.Replies, l.Planned)
			}
		}
		if r.Latency.Samples != int(messages) {
			t.Errorf("%s: %d latency samples, want %d", name, r.Latency.Samples, messages)
		}
	}
	unpaced := int64(p.UnpacedMessages())
	want("broker limit", res.BrokerLimit, unpaced, false)
	want("gateway unpaced", res.GatewayUnpaced, unpaced, true)
	for _, pc := range res.Paced {
		n := int64(pc.Rate * p.Paced[0].Seconds)
		want("broker paced", pc.Broker, n, false)
		want("gateway paced", pc.Gateway, n, true)
	}
	if got := res.Memory.After.IDs - res.Memory.Before.IDs; got != unpaced {
		t.Errorf("replay ids grew by %d over the unpaced run, want %d", got, unpaced)
	}
	if len(res.Scaling) != len(p.ScaleDevices) || len(res.Idle) != 2 {
		t.Fatalf("%d scaling and %d idle points, want %d and 2", len(res.Scaling), len(res.Idle), len(p.ScaleDevices))
	}
	for i, sc := range res.Scaling {
		n := int64(p.ScaleDevices[i] * (p.ScaleMessages / p.ScaleDevices[i]))
		want("scaling", sc.Run, n, true)
	}
	for _, sc := range res.Idle {
		want("idle", sc.Run, int64(p.IdleActive*p.IdleMessages), true)
	}
	for _, pr := range res.Problems { // reported, not judged: a tiny run can still log a warning
		t.Logf("problem: %s", pr)
	}

	md := res.Markdown()
	for _, h := range []string{"### 1. Broker limit", "### 2. Gateway, unpaced", "### 3. Latency, paced", "### 4. Memory", "### 5. Scaling", "### Targets"} {
		if !strings.Contains(md, h) {
			t.Errorf("markdown lacks %q", h)
		}
	}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := writeJSON(path, res); err != nil {
		t.Fatal(err)
	}
	var back Results
	if b, err := os.ReadFile(path); err != nil || json.Unmarshal(b, &back) != nil || back.GatewayUnpaced.Messages != unpaced {
		t.Errorf("results JSON does not round-trip: %v", err)
	}
}

func TestRecorder(t *testing.T) {
	msg := func(seq, sent int) []byte {
		return []byte(`{"payload":{"seq":` + strconv.Itoa(seq) + `,"sent_ns":` + strconv.Itoa(sent) + `}}`)
	}
	tests := []struct {
		name   string
		record func(r *Recorder)
		want   Counts
		ok     bool
	}{
		{"all once", func(r *Recorder) {
			for d := 1; d <= 2; d++ {
				for s := 1; s <= 3; s++ {
					r.Record(DeviceID(d), msg(s, 100), 150)
				}
			}
		}, Counts{Want: 6, Received: 6, Unique: 6}, true},
		{"duplicate and missing", func(r *Recorder) {
			r.Record(DeviceID(1), msg(1, 100), 150)
			r.Record(DeviceID(1), msg(1, 100), 160)
		}, Counts{Want: 6, Received: 2, Unique: 1, Duplicates: 1, Missing: 5}, false},
		{"unexpected", func(r *Recorder) {
			r.Record(DeviceID(3), msg(1, 100), 150)     // no such device
			r.Record(DeviceID(1), msg(4, 100), 150)     // seq out of range
			r.Record("other-1", msg(1, 100), 150)       // other prefix
			r.Record(DeviceID(1), []byte(`{"x":1}`), 1) // no seq
		}, Counts{Want: 6, Received: 4, Unexpected: 4, Missing: 6}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRecorder(DevicePrefix, 2, 3)
			tc.record(r)
			got := r.Snapshot().Counts
			got.FirstUnexpected = ""
			if got != tc.want {
				t.Errorf("counts = %+v, want %+v", got, tc.want)
			}
			if err := got.ExactlyOnce(); (err == nil) != tc.ok {
				t.Errorf("ExactlyOnce() = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestNewLatency(t *testing.T) {
	ns := make([]int64, 1000)
	for i := range ns {
		ns[i] = int64(1000-i) * 1e6 // 1..1000 ms, reversed
	}
	got := NewLatency(ns)
	want := Latency{Samples: 1000, P50: 500, P90: 900, P99: 990, P999: 999, Max: 1000}
	if got != want {
		t.Errorf("NewLatency = %+v, want %+v", got, want)
	}
	if (NewLatency(nil) != Latency{}) {
		t.Errorf("NewLatency(nil) is not zero")
	}
}

func TestParseMicro(t *testing.T) {
	out := `goos: linux
BenchmarkMemoryRecord/windowed-2  	 2934156	       421.4 ns/op	      60 B/op	       0 allocs/op
BenchmarkMemoryBytesPerID/windowed-2       	      14	  92361175 ns/op	        37.22 B/id	22326272 B/op	    2593 allocs/op
BenchmarkMemoryBytesPerID/golang-lru-2     	       6	 170178051 ns/op	       126.6 B/id	51960520 B/op	  302074 allocs/op
BenchmarkCacheBytesPerDevice-2   	      72	  14156044 ns/op	       171.8 B/device
`
	got := ParseMicro(strings.NewReader(out))
	want := []Micro{{"BenchmarkMemoryBytesPerID/windowed", 37.22, "B/id"}, {"BenchmarkMemoryBytesPerID/golang-lru", 126.6, "B/id"},
		{"BenchmarkCacheBytesPerDevice", 171.8, "B/device"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("ParseMicro = %v, want %v", got, want)
	}
}

func TestProcfs(t *testing.T) {
	pid := os.Getpid()
	if _, err := procCPU(pid); err != nil {
		t.Error(err)
	}
	if n, err := procRSS(pid); err != nil || n <= 0 {
		t.Errorf("procRSS = %d, %v", n, err)
	}
}

func TestNum(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{{0, "0"}, {999.4, "999"}, {1000, "1,000"}, {43459.2, "43,459"}, {1234567, "1,234,567"}, {-11580, "-11,580"}} {
		if got := num(tc.in); got != tc.want {
			t.Errorf("num(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestWithoutGateway(t *testing.T) {
	for _, tc := range []struct {
		name  string
		run   Run
		cores int
		want  float64
	}{
		// 10,000 messages; the other three used 2 CPU-s in all: 0.2 ms each,
		// so 2 cores pass at most 10,000 msg/s. The gateway's own CPU is not
		// counted.
		{"two cores", Run{Messages: 10000, CPU: CPU{Gateway: 9, Broker: 1, Bench: 0.5, LoadGenerator: 0.5}}, 2, 10000},
		{"one core", Run{Messages: 10000, CPU: CPU{Broker: 1, Bench: 0.5, LoadGenerator: 0.5}}, 1, 5000},
		{"no CPU figures", Run{Messages: 10000}, 2, 0},
		{"no messages", Run{CPU: CPU{Broker: 1}}, 2, 0},
	} {
		if got := tc.run.WithoutGateway(tc.cores); got != tc.want {
			t.Errorf("%s: WithoutGateway(%d) = %v, want %v", tc.name, tc.cores, got, tc.want)
		}
	}
}
