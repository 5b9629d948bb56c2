package perf

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/iotgw/iotgw/pkg/sim"
)

// consumer is where a run's messages arrive: the Sink (behind a gateway)
// or the Subscriber (straight from the broker).
type consumer interface {
	Expect(*Recorder)
}

// RunSpec is one measurement: Chunks load runs of Load, one after the
// other. Chunking bounds what the broker must queue for a consumer slower
// than the devices: Mosquitto drops messages silently beyond
// max_queued_messages (100,000 in mosquitto/mosquitto.conf), and MQTT has
// no end-to-end backpressure, so an unpaced chunk must not exceed it. Each
// chunk ends when its last message arrived (and, with replies, its last
// reply was verified).
//
// Before each chunk after the first, BeforeChunk (if set) runs, untimed.
// The broker-limit runs use it to give the subscriber a new connection:
// with Mosquitto 2.0.11, a bare Paho subscriber that took one unpaced
// chunk of 100,000 loses most of the next one on the same connection
// ("Outgoing messages are being dropped for client ..." in the broker's
// log), with a clean or a persistent session alike, although far fewer
// than max_queued_messages are outstanding. The gateway's connection has
// not shown it (see docs/PERFORMANCE.md).
//
// Postgres, if set, returns the CPU time PostgreSQL's server processes
// have used so far; the run then counts it as CPU.Postgres.
type RunSpec struct {
	Name        string
	Load        LoadSpec
	Chunks      int
	BeforeChunk func() error
	Postgres    func() time.Duration
	// Started, if set, is called (on another goroutine) once the first
	// message of the first chunk arrived: BenchmarkSteady starts a CPU
	// profile of the gateway then.
	Started func()
}

// Run is a measurement's result.
type Run struct {
	Name string `json:"name"`
	// Consumer is "subscriber" (the broker alone) or "gateway".
	Consumer          string  `json:"consumer"`
	Devices           int     `json:"devices"`
	MessagesPerDevice int     `json:"messages_per_device"`
	Chunks            int     `json:"chunks"`
	Messages          int64   `json:"messages"`
	Rate              float64 `json:"rate"`
	// ConnectSeconds is the load generator's connection set-up (TLS
	// handshakes, subscriptions), summed over chunks; not timed.
	ConnectSeconds float64 `json:"connect_seconds"`
	// SpanSeconds sums, over chunks, first send → last arrival at the
	// consumer; Throughput is Messages / SpanSeconds.
	SpanSeconds float64 `json:"span_seconds"`
	Throughput  float64 `json:"throughput"`
	// ChunkThroughput is each chunk's own throughput.
	ChunkThroughput []float64 `json:"chunk_throughput"`
	// RepliedSeconds sums, over chunks, the load generator's publishing
	// and its wait for the last verified reply; RepliedThroughput is
	// Messages / RepliedSeconds: fully validated, forwarded and replied to.
	RepliedSeconds    float64 `json:"replied_seconds,omitempty"`
	RepliedThroughput float64 `json:"replied_throughput,omitempty"`
	// Counts are the consumer's, over all chunks.
	Counts Counts `json:"counts"`
	// Latency is arrival at the consumer − sent_ns, over all chunks.
	Latency Latency `json:"latency"`
	// CPU is per process, summed over chunks.
	CPU CPU `json:"cpu_seconds"`
	// Gateway holds the gateway's counters, for gateway runs.
	Gateway *GatewayStats `json:"gateway,omitempty"`
	// Loads are the load generator's summaries, one per chunk.
	Loads []sim.LoadSummary `json:"loads"`
}

// CPU is CPU time in seconds by process, from each chunk's first arrival
// at the consumer to its end (the devices' connection set-up excluded).
type CPU struct {
	// Gateway is every gateway of the run together; Gateways is each
	// one's, when there are several.
	Gateway  float64   `json:"gateway"`
	Gateways []float64 `json:"gateways,omitempty"`
	Broker   float64   `json:"broker"`
	// Postgres is PostgreSQL's server processes, when RunSpec.Postgres
	// was set (every database's work: the server is the machine's).
	Postgres float64 `json:"postgres,omitempty"`
	// LoadGenerator is the `iotgw sim load` process.
	LoadGenerator float64 `json:"load_generator"`
	// Bench is this process: the sink or the subscriber.
	Bench float64 `json:"bench"`
	// Other is what the rest of the machine used meanwhile (machine-wide
	// busy and stolen time minus the processes above): the noise of a
	// shared machine.
	Other float64 `json:"other"`
	// LoadGeneratorTotal is the load generator's whole life, TLS
	// handshakes included.
	LoadGeneratorTotal float64 `json:"load_generator_total"`
	// WallSeconds is the wall time the figures above cover.
	WallSeconds float64 `json:"wall_seconds"`
	// GatewaySwitches is the context switches of every gateway's threads
	// over the same time (procSwitches): its wake-ups.
	GatewaySwitches int64 `json:"gateway_context_switches,omitempty"`
}

func (c CPU) add(d CPU) CPU {
	c.Gateway += d.Gateway
	if c.Gateways == nil && d.Gateways != nil {
		c.Gateways = make([]float64, len(d.Gateways))
	}
	for i, v := range d.Gateways {
		c.Gateways[i] += v
	}
	c.Broker += d.Broker
	c.Postgres += d.Postgres
	c.LoadGenerator += d.LoadGenerator
	c.Bench += d.Bench
	c.Other += d.Other
	c.LoadGeneratorTotal += d.LoadGeneratorTotal
	c.WallSeconds += d.WallSeconds
	c.GatewaySwitches += d.GatewaySwitches
	return c
}

// OtherCores returns the rest of the machine's average load in cores
// while the run was measured; clock-tick rounding can make Other slightly
// negative, which counts as 0.
func (c CPU) OtherCores() float64 {
	if c.WallSeconds == 0 {
		return 0
	}
	return max(0, c.Other/c.WallSeconds)
}

// WithoutGateway is an upper bound on a gateway run's throughput had the
// gateway used no CPU at all: the CPU the broker, the sink and the load
// generator spent per message in that run, spread over all cores with
// nothing else running. It shows how much of the machine the rest of the
// path leaves to the gateway, and so which throughput targets this machine
// can reach at all. 0 when the run has no CPU figures.
func (r Run) WithoutGateway(cores int) float64 {
	rest := r.CPU.Broker + r.CPU.Bench + r.CPU.LoadGenerator
	if rest <= 0 || r.Messages == 0 || cores < 1 {
		return 0
	}
	return float64(r.Messages) / (rest / float64(cores))
}

// Per1000 returns seconds per 1,000 messages.
func Per1000(seconds float64, messages int64) float64 {
	if messages == 0 {
		return 0
	}
	return seconds / float64(messages) * 1000
}

// GatewayStats is what the gateway reported about a run.
type GatewayStats struct {
	// Counters are the increase of every iotgw_*_total series, and of
	// every histogram's _sum and _count, over the run's chunks; with
	// several gateways, their sum.
	Counters map[string]float64 `json:"counters"`
	// PerGateway are each gateway's Counters, when there are several.
	PerGateway []map[string]float64 `json:"per_gateway,omitempty"`
}

// cpuSample is the CPU time of each process, and of the machine, at one
// instant.
type cpuSample struct {
	at                                   time.Time
	gateways                             []time.Duration
	switches                             int64 // every gateway's
	broker, self, sim, postgres, machine time.Duration
}

// sampleCPU samples; gws may be empty, simPID 0, postgres nil.
func (r *Rig) sampleCPU(gws []*Gateway, simPID int, postgres func() time.Duration) cpuSample {
	s := cpuSample{at: time.Now(), machine: machineBusy(), broker: r.brokerCPU(), self: selfCPU()}
	for _, gw := range gws {
		d, _ := procCPU(gw.PID)
		s.gateways = append(s.gateways, d)
		n, _ := procSwitches(gw.PID)
		s.switches += n
	}
	if simPID != 0 {
		s.sim, _ = procCPU(simPID)
	}
	if postgres != nil {
		s.postgres = postgres()
	}
	return s
}

// Measure runs spec with c as the consumer and gw (nil for the broker
// alone) in the path. It returns an error, with the Run so far, when a
// message did not arrive exactly once at the consumer or, with replies,
// a reply was missing, unverified or not 2xx.
func (r *Rig) Measure(ctx context.Context, spec RunSpec, c consumer, gw *Gateway) (Run, error) {
	var gws []*Gateway
	if gw != nil {
		gws = []*Gateway{gw}
	}
	return r.MeasureFleet(ctx, spec, c, gws)
}

// MeasureFleet is Measure with every gateway of gws in the path, sharing
// the load (through the broker's share group); their CPU and counters are
// summed, and kept per gateway when there are several.
func (r *Rig) MeasureFleet(ctx context.Context, spec RunSpec, c consumer, gws []*Gateway) (Run, error) {
	run := Run{Name: spec.Name, Consumer: "subscriber", Devices: spec.Load.Devices, MessagesPerDevice: spec.Load.Messages,
		Chunks: max(spec.Chunks, 1), Rate: spec.Load.Rate}
	if len(gws) > 0 {
		run.Consumer = "gateway"
		run.Gateway = &GatewayStats{Counters: map[string]float64{}}
	}
	if len(gws) > 1 {
		for range gws {
			run.Gateway.PerGateway = append(run.Gateway.PerGateway, map[string]float64{})
		}
	}
	var latencies []int64
	for i := range run.Chunks {
		if i > 0 && spec.BeforeChunk != nil {
			if err := spec.BeforeChunk(); err != nil {
				return run, fmt.Errorf("%s: before chunk %d: %w", spec.Name, i+1, err)
			}
		}
		before := make([]map[string]float64, len(gws))
		for i, gw := range gws {
			before[i] = gw.Metrics()
		}
		rec := NewRecorder(DevicePrefix, spec.Load.Devices, spec.Load.Messages)
		c.Expect(rec)
		// The CPU counted starts at the first arrival, so the devices'
		// TLS handshakes do not count as the broker's per-message work.
		first := make(chan cpuSample, 1)
		stop := make(chan struct{})
		var simPID atomic.Int64
		go func() {
			for rec.Received() == 0 {
				select {
				case <-stop:
					first <- r.sampleCPU(gws, 0, spec.Postgres)
					return
				case <-time.After(2 * time.Millisecond):
				}
			}
			first <- r.sampleCPU(gws, int(simPID.Load()), spec.Postgres)
			if i == 0 && spec.Started != nil {
				spec.Started()
			}
		}()
		res, err := r.load(ctx, spec.Load, func(pid int) { simPID.Store(int64(pid)) })
		if err != nil {
			close(stop)
			c.Expect(nil)
			return run, fmt.Errorf("%s: %w", spec.Name, err)
		}
		rec.Wait(ctx, 30*time.Second)
		close(stop)
		b, a := <-first, r.sampleCPU(gws, 0, spec.Postgres)
		a.sim = res.CPU // the process has exited: its whole life
		c.Expect(nil)

		snap := rec.Snapshot()
		run.Messages += snap.Want
		run.ConnectSeconds += res.ConnectSeconds
		span := snap.Span().Seconds()
		run.SpanSeconds += span
		run.ChunkThroughput = append(run.ChunkThroughput, float64(snap.Unique)/span)
		if res.Replies != nil {
			run.RepliedSeconds += res.DurationSeconds + res.Replies.WaitSeconds
		}
		run.Counts = addCounts(run.Counts, snap.Counts)
		latencies = append(latencies, snap.latencies...)
		cpu := CPU{Broker: (a.broker - b.broker).Seconds(), Bench: (a.self - b.self).Seconds(), Postgres: (a.postgres - b.postgres).Seconds(),
			LoadGenerator: (a.sim - b.sim).Seconds(), LoadGeneratorTotal: res.CPU.Seconds(), WallSeconds: a.at.Sub(b.at).Seconds(),
			GatewaySwitches: a.switches - b.switches}
		for i := range gws {
			d := (a.gateways[i] - b.gateways[i]).Seconds()
			cpu.Gateway += d
			if len(gws) > 1 {
				cpu.Gateways = append(cpu.Gateways, d)
			}
		}
		cpu.Other = (a.machine - b.machine).Seconds() - cpu.Gateway - cpu.Broker - cpu.Bench - cpu.LoadGenerator - cpu.Postgres
		run.CPU = run.CPU.add(cpu)
		run.Loads = append(run.Loads, res.LoadSummary)
		for i, gw := range gws {
			for k, v := range counterDelta(before[i], gw.Metrics()) {
				run.Gateway.Counters[k] += v
				if run.Gateway.PerGateway != nil {
					run.Gateway.PerGateway[i][k] += v
				}
			}
		}
		if err := res.check(spec.Load); err != nil {
			return run, fmt.Errorf("%s: %w", spec.Name, err)
		}
		if err := snap.ExactlyOnce(); err != nil {
			return run, fmt.Errorf("%s: at the %s: %w", spec.Name, run.Consumer, err)
		}
	}
	run.Latency = NewLatency(latencies)
	if run.SpanSeconds > 0 {
		run.Throughput = float64(run.Counts.Unique) / run.SpanSeconds
	}
	if run.RepliedSeconds > 0 {
		run.RepliedThroughput = float64(run.Counts.Unique) / run.RepliedSeconds
	}
	return run, nil
}

func addCounts(a, b Counts) Counts {
	a.Want += b.Want
	a.Received += b.Received
	a.Unique += b.Unique
	a.Duplicates += b.Duplicates
	a.Missing += b.Missing
	a.Unexpected += b.Unexpected
	if a.FirstUnexpected == "" {
		a.FirstUnexpected = b.FirstUnexpected
	}
	return a
}

// counterDelta returns after − before for every iotgw_*_total series and
// every histogram's _sum and _count.
func counterDelta(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for _, k := range slices.Sorted(maps.Keys(after)) {
		name, _, _ := strings.Cut(k, "{")
		if strings.HasPrefix(name, "iotgw_") && (strings.HasSuffix(name, "_total") || strings.HasSuffix(name, "_sum") || strings.HasSuffix(name, "_count")) {
			out[k] = after[k] - before[k]
		}
	}
	return out
}

// Anomalies lists the gateway counters that should not move in a clean
// run: rejections, infrastructure errors, retries, dead letters, final
// 4xx answers and broker redeliveries.
func (g *GatewayStats) Anomalies() []string {
	if g == nil {
		return nil
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(g.Counters)) {
		v := g.Counters[k]
		if v == 0 {
			continue
		}
		name, _, _ := strings.Cut(k, "{")
		switch {
		case name == "iotgw_messages_rejected_total", name == "iotgw_infra_errors_total", name == "iotgw_redelivered_inflight_total",
			name == "iotgw_replay_full_total", name == "iotgw_reply_publish_errors_total",
			name == "iotgw_forward_total" && !strings.Contains(k, `"ok"`):
			out = append(out, fmt.Sprintf("%s = %g", k, v))
		}
	}
	return out
}
