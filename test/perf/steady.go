package perf

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SteadyPlan sizes BenchmarkSteady (issue 18): what one message costs the
// gateway at the steady rates fleets really send, next to its unpaced cost
// in the same run, and what an idle gateway costs.
type SteadyPlan struct {
	// Points are the steady rates, each Rate msg/s in total from Devices
	// devices, for Seconds each: through the broker alone (for the added
	// latency), then through a new gateway per build.
	Points  []SteadyPoint `json:"points"`
	Seconds float64       `json:"seconds"`
	// WarmupMessages per device of a point go through its new gateway
	// first, unpaced, so that every device has been seen once.
	WarmupMessages int `json:"warmup_messages_per_device"`
	// UnpacedDevices × UnpacedMessages is the unpaced reference, one chunk
	// on a new gateway per build.
	UnpacedDevices  int `json:"unpaced_devices"`
	UnpacedMessages int `json:"unpaced_messages_per_device"`
	// Registered devices are in every gateway's registry.
	Registered int `json:"registered"`
	// IdleActive devices send IdleWarmup messages each through a new
	// gateway, which is then left without traffic for IdleSeconds.
	IdleActive  int     `json:"idle_active"`
	IdleWarmup  int     `json:"idle_warmup_messages_per_device"`
	IdleSeconds float64 `json:"idle_seconds"`
}

// SteadyPoint is one steady rate.
type SteadyPoint struct {
	Devices int     `json:"devices"`
	Rate    float64 `json:"rate"`
}

// DefaultSteadyPlan is the steady-rate part of `make bench` (`make
// bench-steady` alone): 100 and 1,000 msg/s from 10 and from 1,000
// devices, 30 s each (BENCH_STEADY_SECONDS; BENCH_STEADY_POINTS other
// rates, e.g. "10x100,1000x1000"), and 60 s of an idle gateway
// with 10,000 devices registered. About 7 minutes on the 2-core machine of
// docs/PERFORMANCE.md; twice the gateway part with BENCH_BASELINE.
func DefaultSteadyPlan() SteadyPlan {
	p := SteadyPlan{
		Points:         []SteadyPoint{{10, 100}, {10, 1000}, {1000, 100}, {1000, 1000}},
		Seconds:        30,
		WarmupMessages: 2,
		UnpacedDevices: 100, UnpacedMessages: 500,
		Registered: 10000,
		IdleActive: 10, IdleWarmup: 20, IdleSeconds: 60,
	}
	if v, err := strconv.ParseFloat(os.Getenv("BENCH_STEADY_SECONDS"), 64); err == nil && v > 0 {
		p.Seconds = v
	}
	if pts := parsePoints(os.Getenv("BENCH_STEADY_POINTS")); len(pts) > 0 {
		p.Points = pts
	}
	return p
}

// parsePoints reads BENCH_STEADY_POINTS: comma-separated
// <devices>x<rate>, e.g. "10x100,1000x1000"; nil when empty or malformed.
func parsePoints(v string) []SteadyPoint {
	var out []SteadyPoint
	for f := range strings.SplitSeq(v, ",") {
		d, r, ok := strings.Cut(strings.TrimSpace(f), "x")
		n, err1 := strconv.Atoi(d)
		rate, err2 := strconv.ParseFloat(r, 64)
		if !ok || err1 != nil || err2 != nil || n < 1 || rate <= 0 {
			return nil
		}
		out = append(out, SteadyPoint{Devices: n, Rate: rate})
	}
	return out
}

// SmokeSteadyPlan runs every measurement of the steady plan at a tiny
// scale.
func SmokeSteadyPlan() SteadyPlan {
	return SteadyPlan{
		Points:         []SteadyPoint{{2, 100}, {4, 200}},
		Seconds:        0.5,
		WarmupMessages: 2,
		UnpacedDevices: 2, UnpacedMessages: 100,
		Registered: 20,
		IdleActive: 2, IdleWarmup: 5, IdleSeconds: 1,
	}
}

// perDevice returns the messages per device of point p.
func (sp SteadyPlan) perDevice(p SteadyPoint) int {
	return Pace{Rate: p.Rate, Seconds: sp.Seconds}.perDevice(p.Devices)
}

// issued returns the number of device certificates the plan needs.
func (sp SteadyPlan) issued() int {
	n := max(sp.UnpacedDevices, sp.IdleActive)
	for _, p := range sp.Points {
		n = max(n, p.Devices)
	}
	return n
}

// SteadyResults is everything one steady-rate run measured.
type SteadyResults struct {
	Date        string     `json:"date"`
	StartedAt   string     `json:"started_at"`
	WallSeconds float64    `json:"wall_seconds"`
	LoadAvgEnd  string     `json:"loadavg_at_end"`
	Machine     Machine    `json:"machine"`
	Plan        SteadyPlan `json:"plan"`
	Gateway     string     `json:"gateway_config"`
	// Broker is each point's run through the broker alone.
	Broker []Run `json:"broker"`
	// Builds are the gateways measured: this tree's, and with
	// BENCH_BASELINE an earlier build's, measured alternately.
	Builds []SteadyBuild `json:"builds"`
	// Problems lists what looked wrong without failing the run.
	Problems []string `json:"problems"`
}

// SteadyBuild is one gateway build's figures.
type SteadyBuild struct {
	Name string `json:"name"`
	Bin  string `json:"bin"`
	// Unpaced is the reference; Points are Plan.Points in order, Added the
	// latency they add over the broker's run of the same point.
	Unpaced Run       `json:"unpaced"`
	Points  []Run     `json:"points"`
	Added   []Latency `json:"added"`
	Idle    Idle      `json:"idle"`
}

// Idle is a gateway left without traffic.
type Idle struct {
	Registered int     `json:"registered"`
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// Switches are its threads' context switches meanwhile.
	Switches int64 `json:"context_switches"`
}

// CorePercent is the idle gateway's CPU in percent of one core.
func (i Idle) CorePercent() float64 {
	if i.Seconds == 0 {
		return 0
	}
	return 100 * i.CPUSeconds / i.Seconds
}

// MicrosPerMessage returns a run's gateway CPU per message in µs.
func (r Run) MicrosPerMessage() float64 { return Per1000(r.CPU.Gateway, r.Messages) * 1000 }

// SwitchesPerMessage returns the gateway's context switches per message.
func (r Run) SwitchesPerMessage() float64 {
	if r.Messages == 0 {
		return 0
	}
	return float64(r.CPU.GatewaySwitches) / float64(r.Messages)
}

// ReplyLatency returns the load generator's publish → verified reply
// percentile (p50, p99) over the run's chunks (the worst chunk's).
func (r Run) ReplyLatency(p string) float64 {
	v := 0.0
	for _, l := range r.Loads {
		if l.Replies != nil {
			v = max(v, l.Replies.LatencyMS[p])
		}
	}
	return v
}

type steady struct {
	t      testing.TB
	ctx    context.Context
	plan   SteadyPlan
	out    io.Writer
	rig    *Rig
	sink   *Sink
	res    *SteadyResults
	t0     time.Time
	prof   string // BENCH_STEADY_PROFILE: directory for CPU profiles
	builds []*SteadyBuild
}

// RunSteady runs p; baseline, if not "", is another iotgw binary whose
// gateway is measured alternately with this tree's. A failed check fails
// t.
func RunSteady(t testing.TB, p SteadyPlan, baseline string, out io.Writer) *SteadyResults {
	t.Helper()
	s := &steady{t: t, ctx: context.Background(), plan: p, out: out, t0: time.Now(), prof: os.Getenv("BENCH_STEADY_PROFILE")}
	s.res = &SteadyResults{Date: s.t0.Format(time.DateOnly), StartedAt: s.t0.Format(time.RFC3339), Machine: machineInfo(), Plan: p,
		Gateway: "as in tables 1-5 (durable outbox, synchronous full; every other key at its default)"}
	s.logf("setup: %d device certificates; a registry of %d devices", p.issued(), p.Registered)
	s.rig = NewRig(t, p.issued(), p.Registered)
	s.builds = []*SteadyBuild{{Name: "this", Bin: s.rig.Bin}}
	if baseline != "" {
		s.builds = append(s.builds, &SteadyBuild{Name: "baseline", Bin: baseline})
	}
	s.brokerRuns()
	s.sink = StartSink(t)
	for _, b := range s.order(1) {
		s.unpaced(b)
	}
	for i, pt := range p.Points {
		for _, b := range s.order(i) {
			s.point(b, i, pt)
		}
	}
	for _, b := range s.order(0) {
		s.idle(b)
	}
	if n := s.sink.Strays(); n > 0 {
		s.problem("sink: %d requests arrived between runs", n)
	}
	for _, b := range s.builds {
		s.res.Builds = append(s.res.Builds, *b)
	}
	s.res.WallSeconds = time.Since(s.t0).Seconds()
	s.res.LoadAvgEnd = readTrim("/proc/loadavg")
	return s.res
}

// order returns the builds in the order of round i: alternating, so that
// neither build always runs first (the machine's speed drifts).
func (s *steady) order(i int) []*SteadyBuild {
	if i%2 == 0 || len(s.builds) == 1 {
		return s.builds
	}
	out := make([]*SteadyBuild, len(s.builds))
	for j, b := range s.builds {
		out[len(out)-1-j] = b
	}
	return out
}

func (s *steady) logf(format string, args ...any) {
	fmt.Fprintf(s.out, "[%6.1fs] %s\n", time.Since(s.t0).Seconds(), fmt.Sprintf(format, args...))
}

func (s *steady) problem(format string, args ...any) {
	p := fmt.Sprintf(format, args...)
	s.res.Problems = append(s.res.Problems, p)
	s.logf("PROBLEM: %s", p)
}

func (s *steady) measure(spec RunSpec, c consumer, gw *Gateway) Run {
	s.t.Helper()
	run, err := s.rig.Measure(s.ctx, spec, c, gw)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, a := range run.Gateway.Anomalies() {
		s.problem("%s: gateway counter %s", spec.Name, a)
	}
	line := fmt.Sprintf("%s: %d devices × %d = %d messages, %.0f msg/s at the %s, latency p50 %.2f p99 %.2f ms",
		spec.Name, run.Devices, run.MessagesPerDevice, run.Messages, run.Throughput, run.Consumer, run.Latency.P50, run.Latency.P99)
	if gw != nil {
		line += fmt.Sprintf("; gateway %.0f CPU-µs/msg, %.1f context switches/msg, reply p99 %.2f ms", run.MicrosPerMessage(), run.SwitchesPerMessage(), run.ReplyLatency("p99"))
	}
	s.logf("%s; connect %.1fs; other load %.2f cores", line, run.ConnectSeconds, run.CPU.OtherCores())
	return run
}

func (s *steady) gateway(b *SteadyBuild) *Gateway {
	s.t.Helper()
	return s.rig.StartGatewayOpts(s.t, GatewayOpts{Registered: s.plan.Registered, Backend: s.sink.URL, Bin: b.Bin})
}

func (s *steady) stop(gw *Gateway, what string) {
	s.t.Helper()
	stopGateway(s.t, gw, what, s.problem)
}

// brokerRuns measures each point through the broker alone.
func (s *steady) brokerRuns() {
	reg := s.rig.Registry(s.t, s.plan.Registered)
	sub := s.rig.StartSubscriber(s.t)
	for _, pt := range s.plan.Points {
		if err := sub.Reconnect(s.t); err != nil {
			s.t.Fatal(err)
		}
		s.res.Broker = append(s.res.Broker, s.measure(RunSpec{Name: fmt.Sprintf("broker steady %g msg/s from %d devices", pt.Rate, pt.Devices),
			Load: LoadSpec{Devices: pt.Devices, Messages: s.plan.perDevice(pt), Rate: pt.Rate, Registry: reg}}, sub, nil))
	}
	sub.Close()
	if n := sub.Strays(); n > 0 {
		s.problem("subscriber: %d messages arrived between runs", n)
	}
}

// unpaced is b's reference: one unpaced chunk on a new gateway.
func (s *steady) unpaced(b *SteadyBuild) {
	p := s.plan
	reg := s.rig.Registry(s.t, p.Registered)
	gw := s.gateway(b)
	name := b.Name + ": unpaced"
	s.measure(RunSpec{Name: name + " warm-up", Load: LoadSpec{Devices: p.UnpacedDevices, Messages: 20, Replies: true, Registry: reg}}, s.sink, gw)
	b.Unpaced = s.measure(RunSpec{Name: name, Load: LoadSpec{Devices: p.UnpacedDevices, Messages: p.UnpacedMessages, Replies: true, Registry: reg}}, s.sink, gw)
	s.stop(gw, name)
}

// point measures b at point i on a new gateway.
func (s *steady) point(b *SteadyBuild, i int, pt SteadyPoint) {
	p := s.plan
	reg := s.rig.Registry(s.t, p.Registered)
	gw := s.gateway(b)
	name := fmt.Sprintf("%s: steady %g msg/s from %d devices", b.Name, pt.Rate, pt.Devices)
	s.measure(RunSpec{Name: name + " warm-up", Load: LoadSpec{Devices: pt.Devices, Messages: p.WarmupMessages, Replies: true, Registry: reg}}, s.sink, gw)
	if err := gw.WaitSettled(s.ctx, time.Minute); err != nil {
		s.t.Fatal(err)
	}
	spec := RunSpec{Name: name, Load: LoadSpec{Devices: pt.Devices, Messages: p.perDevice(pt), Rate: pt.Rate, Replies: true, Registry: reg}}
	var profiled chan struct{}
	if s.prof != "" && p.Seconds >= 5 {
		profiled = make(chan struct{})
		path := filepath.Join(s.prof, fmt.Sprintf("%s-%d-devices-%g.pprof", b.Name, pt.Devices, pt.Rate))
		spec.Started = func() {
			defer close(profiled)
			if err := gw.Profile(path, time.Duration(p.Seconds*0.8)*time.Second); err != nil {
				s.problem("%s: profile: %v", name, err)
			}
		}
	}
	run := s.measure(spec, s.sink, gw)
	if profiled != nil {
		<-profiled
	}
	b.Points = append(b.Points, run)
	br := s.res.Broker[i].Latency
	g := run.Latency
	b.Added = append(b.Added, Latency{Samples: g.Samples, P50: g.P50 - br.P50, P90: g.P90 - br.P90, P99: g.P99 - br.P99, P999: g.P999 - br.P999, Max: g.Max - br.Max})
	s.stop(gw, name)
}

// idle measures b's gateway without traffic, after a warm-up.
func (s *steady) idle(b *SteadyBuild) {
	p := s.plan
	gw := s.gateway(b)
	name := b.Name + ": idle"
	s.measure(RunSpec{Name: name + " warm-up", Load: LoadSpec{Devices: p.IdleActive, Messages: p.IdleWarmup, Replies: true,
		Registry: s.rig.Registry(s.t, p.Registered)}}, s.sink, gw)
	if err := gw.WaitSettled(s.ctx, time.Minute); err != nil {
		s.t.Fatal(err)
	}
	time.Sleep(time.Second) // settled rows' deletes and the last timers
	cpu0, sw0, t0 := gw.CPU(), mustSwitches(s.t, gw), time.Now()
	idleFor := time.Duration(p.IdleSeconds * float64(time.Second))
	if s.prof != "" && p.IdleSeconds >= 5 {
		// The profile spans the idle period (less a second's margin).
		path := filepath.Join(s.prof, b.Name+"-idle.pprof")
		if err := gw.Profile(path, idleFor-time.Second); err != nil {
			s.problem("%s: profile: %v", name, err)
		}
	}
	time.Sleep(time.Until(t0.Add(idleFor)))
	cpu1, sw1, t1 := gw.CPU(), mustSwitches(s.t, gw), time.Now()
	b.Idle = Idle{Registered: p.Registered, Seconds: t1.Sub(t0).Seconds(), CPUSeconds: (cpu1 - cpu0).Seconds(), Switches: sw1 - sw0}
	s.logf("%s: %d registered, %.0f s without traffic: %.2f CPU-s, %.3f%% of a core, %.1f context switches/s",
		name, p.Registered, b.Idle.Seconds, b.Idle.CPUSeconds, b.Idle.CorePercent(), float64(b.Idle.Switches)/b.Idle.Seconds)
	s.stop(gw, name)
}

func mustSwitches(t testing.TB, gw *Gateway) int64 {
	n, err := procSwitches(gw.PID)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Profile writes a CPU profile of the gateway over d to path
// (/debug/pprof/profile; http.pprof is on in the benchmark).
func (g *Gateway) Profile(path string, d time.Duration) error {
	c := &http.Client{Timeout: d + 30*time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", g.HTTP, max(1, int(d.Seconds()))))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Markdown returns the steady-rate tables, ready to paste into
// docs/PERFORMANCE.md.
func (r *SteadyResults) Markdown() string {
	var b bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m, p := r.Machine, r.Plan
	w("### 7. Steady rates (issue 18)\n\n")
	w("Run of %s (commit %s", r.StartedAt, m.Commit)
	if m.DiffSHA != "" {
		w(", diff %s", m.DiffSHA)
	}
	w("), %.0f s wall; %d cores (%s), load average at start / end %s / %s.\n\n", r.WallSeconds, m.NProc, m.CPUModel, m.LoadAvg, r.LoadAvgEnd)
	w("Each rate is paced in total over its devices for %g s, through the broker alone and then through a new gateway (%s devices registered, warmed up with %d messages per device); the unpaced reference is %s devices × %s messages on its own gateway. ",
		p.Seconds, num(p.Registered), p.WarmupMessages, num(p.UnpacedDevices), num(p.UnpacedMessages))
	w("*CPU-µs/msg* is the gateway's user + system time from the first arrival at the backend to the last reply, per message; *× unpaced* divides it by the unpaced figure of the same build in this run. ")
	w("Latency is the device's publish (`sent_ns`) → arrival at the backend; *added* is the gateway's percentile minus the broker-only run's. *Reply p99* is the device's publish → its verified reply (two more broker hops and the reply's signing), from the load generator. *Switches/msg* are the gateway threads' context switches per message. Milliseconds.\n\n")
	if len(r.Builds) > 1 {
		w("Builds: ")
		for i, bd := range r.Builds {
			if i > 0 {
				w(", ")
			}
			w("**%s** (`%s`)", bd.Name, bd.Bin)
		}
		w(", measured alternately, a new gateway each.\n\n")
	}
	w("| devices | rate | build | messages | CPU-µs/msg | × unpaced | switches/msg | p50 | p99 | added p50 | added p99 | reply p99 | other load (cores) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, bd := range r.Builds {
		u := bd.Unpaced
		w("| %s | unpaced | %s | %s | **%.1f** | 1 | %.1f | %.2f | %.2f | | | %.2f | %.2f |\n", num(u.Devices), bd.Name, num(u.Messages), u.MicrosPerMessage(),
			u.SwitchesPerMessage(), u.Latency.P50, u.Latency.P99, u.ReplyLatency("p99"), u.CPU.OtherCores())
	}
	for i, pt := range p.Points {
		br := r.Broker[i]
		w("| %s | %s msg/s | broker only | %s | | | | %.2f | %.2f | | | | %.2f |\n", num(pt.Devices), num(pt.Rate), num(br.Messages), br.Latency.P50, br.Latency.P99, br.CPU.OtherCores())
		for _, bd := range r.Builds {
			if i >= len(bd.Points) {
				continue
			}
			g, a := bd.Points[i], bd.Added[i]
			x := 0.0
			if u := bd.Unpaced.MicrosPerMessage(); u > 0 {
				x = g.MicrosPerMessage() / u
			}
			w("| | | %s | %s | **%.1f** | **%.1f×** | %.1f | %.2f | %.2f | %.2f | **%.2f** | %.2f | %.2f |\n", bd.Name, num(g.Messages), g.MicrosPerMessage(), x,
				g.SwitchesPerMessage(), g.Latency.P50, g.Latency.P99, a.P50, a.P99, g.ReplyLatency("p99"), g.CPU.OtherCores())
		}
	}
	w("\n**Idle:** a new gateway, %s devices registered, warmed up with %d devices × %d messages, then %g s without traffic.\n\n", num(p.Registered), p.IdleActive, p.IdleWarmup, p.IdleSeconds)
	w("| build | CPU-s | %% of a core | context switches/s |\n|---|---|---|---|\n")
	for _, bd := range r.Builds {
		id := bd.Idle
		w("| %s | %.2f | **%.3f%%** | %.1f |\n", bd.Name, id.CPUSeconds, id.CorePercent(), float64(id.Switches)/max(id.Seconds, 1e-9))
	}
	w("\n")
	if len(r.Problems) > 0 {
		w("Warnings and anomalies (none failed a check):\n\n")
		for _, pr := range r.Problems {
			w("- %s\n", strings.TrimSpace(pr))
		}
		w("\n")
	}
	return b.String()
}
