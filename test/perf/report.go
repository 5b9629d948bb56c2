package perf

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// Machine describes where a run happened.
type Machine struct {
	NProc     int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	Mosquitto string `json:"mosquitto"`
	MemTotal  string `json:"mem_total"`
	// LoadAvg is /proc/loadavg at the start: the machine is shared.
	LoadAvg string `json:"loadavg_at_start"`
	// Commit is `git describe --always --dirty` of the tree measured.
	Commit string `json:"commit"`
	// DiffSHA is the start of the SHA-256 of `git diff HEAD`: two dirty
	// runs measured the same tracked changes when it is the same.
	DiffSHA string `json:"diff_sha256,omitempty"`
}

func machineInfo() Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	m.Kernel = readTrim("/proc/sys/kernel/osrelease")
	m.LoadAvg = readTrim("/proc/loadavg")
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		m.MemTotal = strings.Join(strings.Fields(strings.TrimPrefix(line, "MemTotal:")), " ")
	}
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
	}
	// mosquitto -h prints its version first and exits 3.
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	m.Mosquitto, _, _ = strings.Cut(string(out), "\n")
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "diff", "HEAD").Output(); err == nil && len(out) > 0 {
		sum := sha256.Sum256(out)
		m.DiffSHA = hex.EncodeToString(sum[:6])
	}
	return m
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// ParseMicro picks the figures the report cites from `go test -bench`
// output: the replay store's bytes per id (BenchmarkMemoryBytesPerID).
func ParseMicro(r io.Reader) []Micro {
	var out []Micro
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		for i := 2; i+1 < len(f); i += 2 {
			if f[i+1] != "B/id" && f[i+1] != "B/device" {
				continue
			}
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				name := f[0]
				if j := strings.LastIndexByte(name, '-'); j > 0 { // the -GOMAXPROCS suffix
					name = name[:j]
				}
				out = append(out, Micro{Name: name, Value: v, Unit: f[i+1]})
			}
		}
	}
	return out
}

// replayMicro returns the micro-benchmark's bytes per id of the gateway's
// store (the windowed one), or 0.
func (r *Results) replayMicro() float64 {
	for _, m := range r.Micro {
		if strings.HasSuffix(m.Name, "/windowed") {
			return m.Value
		}
	}
	return 0
}

// registryMicro returns the micro-benchmark's bytes per device of the
// registry cache, or 0.
func (r *Results) registryMicro() float64 {
	for _, m := range r.Micro {
		if m.Name == "BenchmarkCacheBytesPerDevice" {
			return m.Value
		}
	}
	return 0
}

// registryEntryBytes is what one registered device may cost the gateway
// when idle: its cache entry (a map slot, the id string, the 64-byte
// secret) with allocator rounding.
const registryEntryBytes = 256

func registryNote(micro float64) string {
	if micro <= 0 {
		return ""
	}
	return fmt.Sprintf("; the registry cache alone: %.0f B per device (micro-benchmark)", micro)
}

// evaluate checks issue 5's targets.
func evaluate(r *Results) []Target {
	var t []Target
	gw := r.GatewayUnpaced.RepliedThroughput
	t = append(t, Target{Name: "sustained end to end, durable outbox", Goal: "≥ 10,000 msg/s",
		Measured: num(gw) + " msg/s", Met: gw >= 10000})
	measured := fmt.Sprintf("%.2f× (%s / %s msg/s)", r.Ratio(), num(gw), num(r.BrokerLimit.Throughput))
	if c, bl := r.WithoutGateway, r.BrokerLimit.Throughput; c > 0 && bl > 0 {
		measured += fmt.Sprintf("; a gateway using no CPU could reach at most %s msg/s, %.2f×", num(c), c/bl)
	}
	t = append(t, Target{Name: "share of the broker limit (same run)", Goal: "≥ 0.5×", Measured: measured, Met: r.Ratio() >= 0.5})
	for _, p := range r.Paced {
		if p.Rate == 1000 {
			t = append(t, Target{Name: "p99 added latency at 1,000 msg/s", Goal: "≤ 2 ms",
				Measured: fmt.Sprintf("%.2f ms (gateway p99 %.2f − broker p99 %.2f)", p.Added.P99, p.Gateway.Latency.P99, p.Broker.Latency.P99),
				Met:      p.Added.P99 <= 2})
		}
	}
	m := r.Memory
	measured = fmt.Sprintf("%.1f B/id live heap in the gateway (RSS: %.1f B/id)", m.HeapPerID, m.RSSPerID)
	if mb := r.replayMicro(); mb > 0 {
		measured += fmt.Sprintf("; micro-benchmark %.1f B/id", mb)
	}
	t = append(t, Target{Name: "replay state per remembered id", Goal: "≤ 64 B",
		Measured: measured, Met: m.After.IDs > m.Before.IDs && m.HeapPerID <= 64})
	if len(r.Idle) == 2 {
		a, b := r.Idle[0], r.Idle[1]
		if n := b.Registered - a.Registered; n > 0 {
			per := float64(b.Gateway.Heap-a.Gateway.Heap) / float64(n)
			t = append(t, Target{Name: "idle devices cost only their registry entry", Goal: fmt.Sprintf("≤ %d B live heap per idle device", registryEntryBytes),
				Measured: fmt.Sprintf("%.0f B heap, %.0f B RSS per idle device (%s vs %s registered)%s", per,
					float64(b.Gateway.RSS-a.Gateway.RSS)/float64(n), num(b.Registered), num(a.Registered), registryNote(r.registryMicro())),
				Met: per <= registryEntryBytes})
		}
	}
	return t
}

// writeJSON writes v, indented, to path, creating its directory.
func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Markdown returns the tables, ready to paste into docs/PERFORMANCE.md.
func (r *Results) Markdown() string {
	var b bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.Machine
	w("Run of %s (commit %s", r.StartedAt, m.Commit)
	if m.DiffSHA != "" {
		w(", diff %s", m.DiffSHA)
	}
	w("), %.0f s wall for the whole benchmark.\n\n", r.WallSeconds)
	w("| nproc | CPU | kernel | Go | Mosquitto | memory | load average at start / end |\n|---|---|---|---|---|---|---|\n")
	w("| %d | %s | %s | %s | %s | %s | %s / %s |\n\n", m.NProc, m.CPUModel, m.Kernel, m.Go, m.Mosquitto, m.MemTotal, m.LoadAvg, r.LoadAvgEnd)
	w("\"Other load\" is the CPU the rest of the machine used while a run was measured (machine-wide busy and hypervisor-stolen time from /proc/stat minus the gateway, broker, load generator and benchmark processes; tick accounting makes it approximate), in cores: this machine is shared, and a run with other load is noisier.\n\n")
	w("Gateway: %s.\n\n", r.Gateway)

	p := r.Plan
	w("**Sizes.** Tables 1, 2 and 4: %s devices × %s messages × %d chunks = %s messages (a chunk stays below the broker's max_queued_messages). "+
		"Warm-up: %d messages per device on each new gateway. Paced: ", num(p.Devices), num(p.Messages), p.Chunks, num(p.UnpacedMessages()), p.WarmupMessages)
	for i, pc := range p.Paced {
		if i > 0 {
			w(", ")
		}
		w("%s msg/s for %g s (%s messages)", num(pc.Rate), pc.Seconds, num(pc.perDevice(p.Devices)*p.Devices))
	}
	w(". Scaling: %s messages per point. Idle: %d active devices × %s messages.\n\n", num(p.ScaleMessages), p.IdleActive, num(p.IdleMessages))

	s := r.Setup
	w("**Setup (untimed).** Build %.1f s; %s device certificates %.1f s (%.2f ms each); %s registry entries %.1f s (%.0f µs each); broker start %.1f s.\n\n",
		s.BuildSeconds, num(s.Devices), s.IssueSeconds, s.IssueSeconds*1000/float64(max(s.Devices, 1)),
		num(s.Registered), s.RegisterSeconds, s.RegisterSeconds*1e6/float64(max(s.Registered, 1)), s.BrokerStartSeconds)

	bl, gu := r.BrokerLimit, r.GatewayUnpaced
	w("### 1. Broker limit\n\n")
	w("`iotgw sim load` unpaced → Mosquitto → a bare Paho subscriber (QoS 1, counts and timestamps). Throughput is messages ÷ (first send → last arrival), summed over chunks.\n\n")
	w("| devices | messages | msg/s | chunks (msg/s) | broker CPU s / 1,000 msg | subscriber CPU s / 1,000 msg | other load (cores) |\n|---|---|---|---|---|---|---|\n")
	w("| %s | %s | **%s** | %s | %.3f | %.3f | %.2f |\n\n", num(bl.Devices), num(bl.Messages), num(bl.Throughput), rates(bl.ChunkThroughput),
		Per1000(bl.CPU.Broker, bl.Messages), Per1000(bl.CPU.Bench, bl.Messages), bl.CPU.OtherCores())

	w("### 2. Gateway, unpaced\n\n")
	w("The same load through `iotgw serve` to the sink backend, every reply verified by the device. \"Replied\" is messages ÷ (publishing + wait for the last verified reply); \"at sink\" is messages ÷ (first send → last backend arrival). Every message reached the sink exactly once.\n\n")
	w("| devices | messages | msg/s replied | msg/s at sink | ratio to (1) | gateway CPU s / 1,000 msg | broker CPU s / 1,000 msg | sink CPU s / 1,000 msg | other load (cores) |\n|---|---|---|---|---|---|---|---|---|\n")
	w("| %s | %s | **%s** | %s | **%.2f×** | **%.3f** | %.3f | %.3f | %.2f |\n\n", num(gu.Devices), num(gu.Messages), num(gu.RepliedThroughput), num(gu.Throughput), r.Ratio(),
		Per1000(gu.CPU.Gateway, gu.Messages), Per1000(gu.CPU.Broker, gu.Messages), Per1000(gu.CPU.Bench, gu.Messages), gu.CPU.OtherCores())
	w("Chunks at the sink: %s msg/s. CPU over %.0f s of measurement on %d cores: gateway %.1f s, broker %.1f s, sink %.1f s, load generator %.1f s, other processes %.1f s.\n\n",
		rates(gu.ChunkThroughput), gu.CPU.WallSeconds, m.NProc, gu.CPU.Gateway, gu.CPU.Broker, gu.CPU.Bench, gu.CPU.LoadGenerator, gu.CPU.Other)
	if c := r.WithoutGateway; c > 0 && bl.Throughput > 0 {
		w("**Ceiling without the gateway's CPU:** the broker, the sink and the load generator used %.3f CPU-s per 1,000 messages in this run, so even a gateway that cost nothing could not pass %s msg/s on %d cores (%.2f× the broker limit); the gateway gets what is left.\n\n",
			Per1000(gu.CPU.Broker+gu.CPU.Bench+gu.CPU.LoadGenerator, gu.Messages), num(c), m.NProc, c/bl.Throughput)
	}

	if gb := r.GatewayBatch; gb.Messages > 0 {
		ratio := 0.0
		if bl.Throughput > 0 {
			ratio = gb.RepliedThroughput / bl.Throughput
		}
		w("Optional batch mode (not the default; `%s`), one chunk on a new gateway:\n\n", strings.ReplaceAll(strings.TrimSpace(fmt.Sprintf(BatchConfig, "<sink>/batch")), "\n  ", ", "))
		w("| devices | messages | msg/s replied | msg/s at sink | ratio to (1) | gateway CPU s / 1,000 msg | broker CPU s / 1,000 msg | sink CPU s / 1,000 msg | other load (cores) |\n|---|---|---|---|---|---|---|---|---|\n")
		w("| %s | %s | **%s** | %s | **%.2f×** | **%.3f** | %.3f | %.3f | %.2f |\n\n", num(gb.Devices), num(gb.Messages), num(gb.RepliedThroughput), num(gb.Throughput), ratio,
			Per1000(gb.CPU.Gateway, gb.Messages), Per1000(gb.CPU.Broker, gb.Messages), Per1000(gb.CPU.Bench, gb.Messages), gb.CPU.OtherCores())
	}

	w("### 3. Latency, paced\n\n")
	w("Device send (`sent_ns`) → arrival: at the bare subscriber (broker only) and at the sink backend (through the gateway). \"Added\" is gateway minus broker, percentile by percentile (a difference of percentiles, not a percentile of differences). Milliseconds.\n\n")
	w("| rate | path | messages | p50 | p99 | p99.9 | max | gateway CPU s / 1,000 msg | other load (cores) |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, pc := range r.Paced {
		b, g := pc.Broker, pc.Gateway
		w("| %s msg/s | broker only | %s | %.2f | %.2f | %.2f | %.2f | | %.2f |\n", num(pc.Rate), num(b.Messages), b.Latency.P50, b.Latency.P99, b.Latency.P999, b.Latency.Max, b.CPU.OtherCores())
		w("| | through gateway | %s | %.2f | %.2f | %.2f | %.2f | %.3f | %.2f |\n", num(g.Messages), g.Latency.P50, g.Latency.P99, g.Latency.P999, g.Latency.Max,
			Per1000(g.CPU.Gateway, g.Messages), g.CPU.OtherCores())
		w("| | **added by gateway** | | **%.2f** | **%.2f** | **%.2f** | | | |\n", pc.Added.P50, pc.Added.P99, pc.Added.P999)
	}
	w("\n")

	mem := r.Memory
	w("### 4. Memory per remembered message id\n\n")
	w("One gateway, after its warm-up and after the %s messages of table 2 (all inside the replay window). Live heap is HeapAlloc right after a GC (`/debug/pprof/heap?gc=1`); RSS also holds GC headroom and freed pages not yet returned.\n\n", num(p.UnpacedMessages()))
	w("| | replay ids | RSS | live heap |\n|---|---|---|---|\n")
	w("| before | %s | %.1f MiB | %.1f MiB |\n| after | %s | %.1f MiB | %.1f MiB |\n", num(mem.Before.IDs), mib(mem.Before.RSS), mib(mem.Before.Heap), num(mem.After.IDs), mib(mem.After.RSS), mib(mem.After.Heap))
	w("| **per id** | | %.1f B | **%.1f B** |\n\n", mem.RSSPerID, mem.HeapPerID)
	if len(r.Micro) > 0 {
		w("Micro-benchmark (`go test -bench BenchmarkMemoryBytesPerID ./pkg/replay`, live heap of the store alone, 300,000 ids): ")
		for i, mc := range r.Micro {
			if i > 0 {
				w(", ")
			}
			w("%s %.1f %s", strings.TrimPrefix(mc.Name, "BenchmarkMemoryBytesPerID/"), mc.Value, mc.Unit)
		}
		w(".\n\n")
	}

	w("### 5. Scaling with the number of devices\n\n")
	w("The same number of messages from more devices, each with its own certificate, mTLS connection and registry entry; %s devices registered in every run; each point on a new gateway. Connect is the load generator's TLS handshakes and subscriptions, untimed.\n\n", num(r.Plan.issued()))
	w("| devices | msg / device | messages | connect s | msg/s replied | msg/s at sink | gateway CPU s / 1,000 msg | gateway RSS | live heap | broker RSS | other load (cores) |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, sc := range r.Scaling {
		rn := sc.Run
		w("| %s | %s | %s | %.1f | %s | %s | %.3f | %.1f MiB | %.1f MiB | %.1f MiB | %.2f |\n", num(rn.Devices), num(rn.MessagesPerDevice), num(rn.Messages), rn.ConnectSeconds,
			num(rn.RepliedThroughput), num(rn.Throughput), Per1000(rn.CPU.Gateway, rn.Messages), mib(sc.Gateway.RSS), mib(sc.Gateway.Heap), mib(sc.BrokerRSS), rn.CPU.OtherCores())
	}
	w("\nIdle devices: the same %d active devices × %s messages, with only them registered and with %s registered.\n\n", p.IdleActive, num(p.IdleMessages), num(r.Plan.issued()))
	w("| registered | active | gateway RSS | live heap |\n|---|---|---|---|\n")
	for _, sc := range r.Idle {
		w("| %s | %s | %.1f MiB | %.1f MiB |\n", num(sc.Registered), num(sc.Run.Devices), mib(sc.Gateway.RSS), mib(sc.Gateway.Heap))
	}
	w("\n### Targets (issue 5)\n\n| target | goal | this run | met |\n|---|---|---|---|\n")
	for _, tg := range r.Targets {
		met := "no"
		if tg.Met {
			met = "yes"
		}
		w("| %s | %s | %s | %s |\n", tg.Name, tg.Goal, tg.Measured, met)
	}
	w("\n")
	if len(r.Problems) > 0 {
		w("### Warnings and anomalies\n\nGateway log lines at warn or above, counters that should not move in a clean run, strays at the sink or subscriber. None of them failed a check.\n\n")
		for _, pr := range r.Problems {
			w("- %s\n", pr)
		}
		w("\n")
	}
	return b.String()
}

// rates formats per-chunk throughputs.
func rates(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = num(x)
	}
	return strings.Join(s, " / ")
}

// num formats f rounded to an integer, with thousands separators.
func num[T int | int64 | float64](f T) string {
	n := int64(math.Round(float64(f)))
	sign := ""
	if n < 0 {
		sign, n = "-", -n
	}
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return sign + s
}
