package perf

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// Plan sizes one benchmark run. Every count is printed with the results.
type Plan struct {
	// Devices publish in the broker-limit, unpaced, memory and paced runs.
	Devices int `json:"devices"`
	// Messages per device in each unpaced chunk.
	Messages int `json:"messages_per_device"`
	// Chunks of Devices × Messages in the broker-limit and the gateway's
	// unpaced run; the latter's ids are the ones table 4 counts.
	Chunks int `json:"chunks"`
	// WarmupMessages per device go through a new gateway before it is
	// measured (connections, pools and caches filled).
	WarmupMessages int `json:"warmup_messages_per_device"`
	// Paced are the paced runs, each through the broker alone and through
	// the gateway.
	Paced []Pace `json:"paced"`
	// ScaleDevices are the device counts of the scaling runs, each sending
	// ScaleMessages in total through a new gateway.
	ScaleDevices  []int `json:"scale_devices"`
	ScaleMessages int   `json:"scale_messages"`
	// IdleActive devices send IdleMessages each through a gateway whose
	// registry holds IdleActive devices, then through one whose registry
	// holds every issued device.
	IdleActive   int `json:"idle_active"`
	IdleMessages int `json:"idle_messages_per_device"`
}

// Pace is a paced run: Rate msg/s in total for Seconds.
type Pace struct {
	Rate    float64 `json:"rate"`
	Seconds float64 `json:"seconds"`
}

// perDevice returns the messages per device of a paced run.
func (p Pace) perDevice(devices int) int {
	return max(1, int(math.Round(p.Rate*p.Seconds/float64(devices))))
}

// DefaultPlan is `make bench`: about 4 minutes on the 2-core machine of
// docs/PERFORMANCE.md with the gateway at ~8,000 msg/s unpaced; the
// unpaced and scaling runs take longer with a slower gateway (about 8
// minutes at 2,500 msg/s), the paced ones do not.
func DefaultPlan() Plan {
	return Plan{
		Devices:        100,
		Messages:       1000,
		Chunks:         3,
		WarmupMessages: 20,
		Paced:          []Pace{{Rate: 1000, Seconds: 30}, {Rate: 5000, Seconds: 20}},
		ScaleDevices:   []int{10, 1000, 10000},
		ScaleMessages:  50000,
		IdleActive:     10,
		IdleMessages:   1000,
	}
}

// SmokePlan runs every measurement of DefaultPlan at a tiny scale.
func SmokePlan() Plan {
	return Plan{
		Devices:        2,
		Messages:       200,
		Chunks:         1,
		WarmupMessages: 5,
		Paced:          []Pace{{Rate: 400, Seconds: 0.5}},
		ScaleDevices:   []int{2, 4},
		ScaleMessages:  200,
		IdleActive:     2,
		IdleMessages:   50,
	}
}

// issued returns the number of device certificates and the size of the
// largest registry.
func (p Plan) issued() int {
	return max(p.Devices, p.IdleActive, slices.Max(append([]int{1}, p.ScaleDevices...)))
}

// UnpacedMessages returns the messages of the gateway's unpaced run.
func (p Plan) UnpacedMessages() int { return p.Devices * p.Messages * max(p.Chunks, 1) }

// Results is everything one run measured; it is written as JSON.
type Results struct {
	Date string `json:"date"`
	// LoadAvgEnd is /proc/loadavg at the end (Machine has the start's).
	LoadAvgEnd  string  `json:"loadavg_at_end"`
	StartedAt   string  `json:"started_at"`
	WallSeconds float64 `json:"wall_seconds"`
	Machine     Machine `json:"machine"`
	Plan        Plan    `json:"plan"`
	Setup       Setup   `json:"setup"`
	// Gateway describes the gateway's configuration in every run.
	Gateway string `json:"gateway_config"`

	BrokerLimit    Run `json:"broker_limit"`
	GatewayUnpaced Run `json:"gateway_unpaced"`
	// GatewayBatch is the unpaced run with the optional backend batch mode
	// (BatchConfig), one chunk, measured separately: not the default.
	GatewayBatch Run     `json:"gateway_unpaced_batch_mode"`
	Paced        []Paced `json:"paced"`
	Memory       Memory  `json:"memory"`
	Scaling      []Scale `json:"scaling"`
	Idle         []Scale `json:"idle"`
	Micro        []Micro `json:"micro,omitempty"`
	// WithoutGateway is GatewayUnpaced.WithoutGateway: the throughput a
	// gateway costing no CPU could reach on this machine in this run.
	WithoutGateway float64  `json:"ceiling_without_gateway"`
	Targets        []Target `json:"targets"`
	// Problems lists what looked wrong without failing the run: gateway
	// warnings or errors, counters that should not move, strays.
	Problems []string `json:"problems"`
}

// Ratio returns the gateway's unpaced end-to-end throughput over the
// broker limit.
func (r *Results) Ratio() float64 {
	if r.BrokerLimit.Throughput == 0 {
		return 0
	}
	return r.GatewayUnpaced.RepliedThroughput / r.BrokerLimit.Throughput
}

// Paced is one paced rate through the broker alone and through the gateway.
type Paced struct {
	Rate    float64 `json:"rate"`
	Broker  Run     `json:"broker"`
	Gateway Run     `json:"gateway"`
	// Added is the gateway's percentiles minus the broker's: the latency
	// the gateway adds (a difference of percentiles, not a percentile of
	// differences).
	Added Latency `json:"added"`
}

// MemPoint is the gateway's memory at one instant.
type MemPoint struct {
	// RSS is VmRSS in bytes.
	RSS int64 `json:"rss_bytes"`
	// Heap is the live heap after a GC in bytes.
	Heap int64 `json:"heap_bytes"`
	// IDs is iotgw_replay_ids: message ids in the replay window.
	IDs int64 `json:"replay_ids"`
}

// Memory is the replay-state measurement (table 4).
type Memory struct {
	Before MemPoint `json:"before"`
	After  MemPoint `json:"after"`
	// RSSPerID and HeapPerID are the increase per id added.
	RSSPerID  float64 `json:"rss_bytes_per_id"`
	HeapPerID float64 `json:"heap_bytes_per_id"`
}

// Scale is one scaling or idle-registry point.
type Scale struct {
	Registered int      `json:"registered"`
	Run        Run      `json:"run"`
	Gateway    MemPoint `json:"gateway_memory"`
	BrokerRSS  int64    `json:"broker_rss_bytes"`
}

// Micro is one figure from the packages' micro-benchmarks.
type Micro struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// Target is one of issue 5's targets and whether this run met it.
type Target struct {
	Name     string `json:"name"`
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// suite runs a Plan; progress lines go to out.
type suite struct {
	t    testing.TB
	ctx  context.Context
	plan Plan
	out  io.Writer
	rig  *Rig
	sink *Sink
	res  *Results
	t0   time.Time
}

// RunSuite runs every measurement of p in one go and returns the results;
// a failed check fails t. Setup (certificates, registries, broker) is done
// first and kept out of every timed section.
func RunSuite(t testing.TB, p Plan, out io.Writer) *Results {
	t.Helper()
	s := &suite{t: t, ctx: context.Background(), plan: p, out: out, t0: time.Now()}
	s.res = &Results{Date: s.t0.Format(time.DateOnly), StartedAt: s.t0.Format(time.RFC3339), Machine: machineInfo(), Plan: p,
		Gateway: "iotgw serve defaults except: outbox.synchronous full (the durable default, stated), log.level warn, http.pprof true (used for the live-heap figures); " +
			"backend in the bench process answers 200 {\"ok\":true} at once; every device its own certificate, mTLS connection and registry entry"}
	large := p.issued()
	s.logf("setup: %d device certificates; registries of %d and %d devices", large, p.IdleActive, large)
	s.rig = NewRig(t, large, p.IdleActive, large)
	s.res.Setup = s.rig.Setup
	s.logf("setup: build %.1fs, certificates %.1fs (%.2f ms each), registry %.1fs, broker %.1fs",
		s.rig.Setup.BuildSeconds, s.rig.Setup.IssueSeconds, s.rig.Setup.IssueSeconds*1000/float64(large),
		s.rig.Setup.RegisterSeconds, s.rig.Setup.BrokerStartSeconds)

	s.brokerRuns()
	s.sink = StartSink(t)
	s.unpacedAndMemory()
	s.batchUnpaced()
	s.pacedGateway()
	s.scaling()
	s.idle()
	if n := s.sink.Strays(); n > 0 {
		s.problem("sink: %d requests arrived between runs", n)
	}
	s.res.WallSeconds = time.Since(s.t0).Seconds()
	s.res.LoadAvgEnd = readTrim("/proc/loadavg")
	s.res.WithoutGateway = s.res.GatewayUnpaced.WithoutGateway(s.res.Machine.NProc)
	s.res.Targets = evaluate(s.res)
	return s.res
}

func (s *suite) logf(format string, args ...any) {
	fmt.Fprintf(s.out, "[%6.1fs] %s\n", time.Since(s.t0).Seconds(), fmt.Sprintf(format, args...))
}

func (s *suite) problem(format string, args ...any) {
	p := fmt.Sprintf(format, args...)
	s.res.Problems = append(s.res.Problems, p)
	s.logf("PROBLEM: %s", p)
}

// measure runs spec and fails the test on a failed check.
func (s *suite) measure(spec RunSpec, c consumer, gw *Gateway) Run {
	s.t.Helper()
	run, err := s.rig.Measure(s.ctx, spec, c, gw)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, a := range run.Gateway.Anomalies() {
		s.problem("%s: gateway counter %s", spec.Name, a)
	}
	line := fmt.Sprintf("%s: %d devices × %d × %d chunks = %d messages, %.0f msg/s at the %s",
		spec.Name, run.Devices, run.MessagesPerDevice, run.Chunks, run.Messages, run.Throughput, run.Consumer)
	if run.RepliedThroughput > 0 {
		line += fmt.Sprintf(", %.0f msg/s replied", run.RepliedThroughput)
	}
	line += fmt.Sprintf(", latency p50 %.2f p99 %.2f p999 %.2f ms; connect %.1fs; other load %.2f cores",
		run.Latency.P50, run.Latency.P99, run.Latency.P999, run.ConnectSeconds, run.CPU.OtherCores())
	s.logf("%s", line)
	return run
}

// gateway starts a gateway with the registry of registered devices.
func (s *suite) gateway(registered int) *Gateway {
	s.t.Helper()
	return s.rig.StartGateway(s.t, registered, s.sink.URL)
}

// stop collects the gateway's log verdict and stops it.
func (s *suite) stop(gw *Gateway, what string) {
	s.t.Helper()
	stopGateway(s.t, gw, what, s.problem)
}

// stopGateway reports, through problem, each of gw's log lines above info,
// and stops it.
func stopGateway(t testing.TB, gw *Gateway, what string, problem func(format string, args ...any)) {
	t.Helper()
	lines := gw.LogLines()
	for _, l := range slices.SortedFunc(maps.Keys(lines), func(a, b LogLine) int { return strings.Compare(a.Level+a.Msg, b.Level+b.Msg) }) {
		if l.Level != "info" && l.Level != "debug" {
			problem("%s: gateway logged %d× at %s: %q", what, lines[l], l.Level, l.Msg)
		}
	}
	if err := gw.Stop(); err != nil {
		t.Fatal(err)
	}
}

func (s *suite) memPoint(gw *Gateway) MemPoint {
	s.t.Helper()
	if err := gw.WaitSettled(s.ctx, time.Minute); err != nil {
		s.t.Fatal(err)
	}
	heap := gw.Heap()
	return MemPoint{RSS: gw.RSS(), Heap: heap, IDs: int64(gw.Metrics()["iotgw_replay_ids"])}
}

// brokerRuns measures the broker alone: the limit, then each paced rate.
func (s *suite) brokerRuns() {
	p := s.plan
	reg := s.rig.Registry(s.t, p.issued())
	sub := s.rig.StartSubscriber(s.t)
	s.res.BrokerLimit = s.measure(RunSpec{Name: "broker limit", Chunks: p.Chunks, BeforeChunk: func() error { return sub.Reconnect(s.t) },
		Load: LoadSpec{Devices: p.Devices, Messages: p.Messages, Registry: reg}}, sub, nil)
	for _, pace := range p.Paced {
		if err := sub.Reconnect(s.t); err != nil {
			s.t.Fatal(err)
		}
		run := s.measure(RunSpec{Name: fmt.Sprintf("broker paced %g msg/s", pace.Rate),
			Load: LoadSpec{Devices: p.Devices, Messages: pace.perDevice(p.Devices), Rate: pace.Rate, Registry: reg}}, sub, nil)
		s.res.Paced = append(s.res.Paced, Paced{Rate: pace.Rate, Broker: run})
	}
	sub.Close()
	if n := sub.Strays(); n > 0 {
		s.problem("subscriber: %d messages arrived between runs", n)
	}
}

// warmup sends WarmupMessages per device through gw.
func (s *suite) warmup(gw *Gateway, reg string) {
	s.measure(RunSpec{Name: "gateway warm-up",
		Load: LoadSpec{Devices: s.plan.Devices, Messages: s.plan.WarmupMessages, Replies: true, Registry: reg}}, s.sink, gw)
}

// unpacedAndMemory is tables 2 and 4: one new gateway, warmed up, then
// the unpaced chunks; memory is read before and after them.
func (s *suite) unpacedAndMemory() {
	p := s.plan
	large := p.issued()
	reg := s.rig.Registry(s.t, large)
	gw := s.gateway(large)
	s.warmup(gw, reg)
	s.res.Memory.Before = s.memPoint(gw)
	s.res.GatewayUnpaced = s.measure(RunSpec{Name: "gateway unpaced", Chunks: p.Chunks,
		Load: LoadSpec{Devices: p.Devices, Messages: p.Messages, Replies: true, Registry: reg}}, s.sink, gw)
	m := &s.res.Memory
	m.After = s.memPoint(gw)
	if ids := m.After.IDs - m.Before.IDs; ids > 0 {
		m.RSSPerID = float64(m.After.RSS-m.Before.RSS) / float64(ids)
		m.HeapPerID = float64(m.After.Heap-m.Before.Heap) / float64(ids)
	}
	if want := int64(p.UnpacedMessages()); m.After.IDs-m.Before.IDs != want {
		s.problem("replay ids grew by %d over the unpaced run, want %d", m.After.IDs-m.Before.IDs, want)
	}
	s.logf("memory: %d → %d ids; RSS %.1f → %.1f MiB (%.1f B/id); live heap %.1f → %.1f MiB (%.1f B/id)",
		m.Before.IDs, m.After.IDs, mib(m.Before.RSS), mib(m.After.RSS), m.RSSPerID, mib(m.Before.Heap), mib(m.After.Heap), m.HeapPerID)
	s.stop(gw, "gateway unpaced")
}

// BatchConfig is the backend section's batch-mode keys of the batch run.
const BatchConfig = "  batch_max: 64\n  workers: 2\n  batch_url: %s\n"

// batchUnpaced is table 2's second row: the optional batch mode, one chunk,
// on a new gateway.
func (s *suite) batchUnpaced() {
	p := s.plan
	large := p.issued()
	reg := s.rig.Registry(s.t, large)
	gw := s.rig.StartGatewayWith(s.t, large, s.sink.URL, fmt.Sprintf(BatchConfig, s.sink.BatchURL))
	s.warmup(gw, reg)
	s.res.GatewayBatch = s.measure(RunSpec{Name: "gateway unpaced, batch mode",
		Load: LoadSpec{Devices: p.Devices, Messages: p.Messages, Replies: true, Registry: reg}}, s.sink, gw)
	s.stop(gw, "gateway unpaced, batch mode")
}

// pacedGateway is table 3's gateway side, on a new gateway.
func (s *suite) pacedGateway() {
	p := s.plan
	large := p.issued()
	reg := s.rig.Registry(s.t, large)
	gw := s.gateway(large)
	s.warmup(gw, reg)
	for i, pace := range p.Paced {
		run := s.measure(RunSpec{Name: fmt.Sprintf("gateway paced %g msg/s", pace.Rate),
			Load: LoadSpec{Devices: p.Devices, Messages: pace.perDevice(p.Devices), Rate: pace.Rate, Replies: true, Registry: reg}}, s.sink, gw)
		pr := &s.res.Paced[i]
		pr.Gateway = run
		b, g := pr.Broker.Latency, run.Latency
		pr.Added = Latency{Samples: g.Samples, P50: g.P50 - b.P50, P90: g.P90 - b.P90, P99: g.P99 - b.P99, P999: g.P999 - b.P999, Max: g.Max - b.Max}
	}
	s.stop(gw, "gateway paced")
}

// scaling is table 5: the same number of messages from more and more
// devices, each point on a new gateway with every device registered.
func (s *suite) scaling() {
	p := s.plan
	large := p.issued()
	reg := s.rig.Registry(s.t, large)
	for _, n := range p.ScaleDevices {
		gw := s.gateway(large)
		run := s.measure(RunSpec{Name: fmt.Sprintf("scaling %d devices", n),
			Load: LoadSpec{Devices: n, Messages: max(1, p.ScaleMessages/n), Replies: true, Registry: reg}}, s.sink, gw)
		pt := Scale{Registered: large, Run: run, Gateway: s.memPoint(gw), BrokerRSS: s.rig.brokerRSS()}
		s.logf("scaling %d devices: gateway RSS %.1f MiB, live heap %.1f MiB; broker RSS %.1f MiB",
			n, mib(pt.Gateway.RSS), mib(pt.Gateway.Heap), mib(pt.BrokerRSS))
		s.res.Scaling = append(s.res.Scaling, pt)
		s.stop(gw, run.Name)
	}
}

// idle compares a gateway whose registry holds only the active devices
// with one whose registry holds every issued device, the same few active.
func (s *suite) idle() {
	p := s.plan
	for _, registered := range []int{p.IdleActive, p.issued()} {
		gw := s.gateway(registered)
		run := s.measure(RunSpec{Name: fmt.Sprintf("idle: %d registered, %d active", registered, p.IdleActive),
			Load: LoadSpec{Devices: p.IdleActive, Messages: p.IdleMessages, Replies: true, Registry: s.rig.Registry(s.t, registered)}}, s.sink, gw)
		pt := Scale{Registered: registered, Run: run, Gateway: s.memPoint(gw), BrokerRSS: s.rig.brokerRSS()}
		if got := int(gw.Metrics()["iotgw_registry_devices"]); got != registered {
			s.problem("gateway with %d registered devices reports iotgw_registry_devices %d", registered, got)
		}
		s.logf("idle: %d registered: gateway RSS %.1f MiB, live heap %.1f MiB", registered, mib(pt.Gateway.RSS), mib(pt.Gateway.Heap))
		s.res.Idle = append(s.res.Idle, pt)
		s.stop(gw, run.Name)
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
