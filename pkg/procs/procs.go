// Package procs runs the gateway on one P (GOMAXPROCS=1) while it is
// lightly loaded, and gives the runtime's default back as soon as it is
// not.
//
// Why: at steady rates a message is alone, and each hand-off between
// goroutines on its path (Paho's, net/http's, the gateway's stages)
// readies a goroutine while a P is idle, so the runtime wakes another
// thread to look for work: a futex wake and two context switches, which
// on a virtual machine cost more than the message's own work. On one P
// the readied goroutine simply runs next on the same thread. Measured
// (docs/PERFORMANCE.md, "Steady rates"): one P costs 16–22% less CPU per
// message at 100 and 1,000 msg/s with the same latency, and about 15% of
// the unpaced throughput, hence the adaptation instead of a fixed value.
//
// The decision is Governor's alone (pure, table-tested); Run only feeds
// it the process's CPU time, the gateway's backlog, its threads' run-queue
// wait and the scheduler's latency, and applies its answer with runtime.GOMAXPROCS(1) and runtime.SetDefaultGOMAXPROCS.
// It never goes above the default, and stays off when the operator set
// GOMAXPROCS or the default is already 1.
package procs

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/internal/tick"
)

// Config is the Governor's thresholds. Zero values are not meaningful;
// start from DefaultConfig.
type Config struct {
	// Window is how often the load is sampled; its ticks fall on those of
	// the process's other periodic work (internal/tick), so that an idle
	// gateway is not woken for it alone.
	Window time.Duration
	// Down is the CPU (in cores, user + system, of the whole process)
	// below which every window of Hold must stay before the Governor goes
	// to one P.
	Down float64
	// Hold is how long the load must stay below Down.
	Hold time.Duration
	// Up is the CPU, in cores, above which one window on one P is enough
	// to give the default back.
	Up float64
	// UpBacklog gives the default back too when, at the end of a window
	// on one P, at least this many messages wait to be worked on (Run's
	// backlog function): the one P does not keep up, whatever the CPU
	// says. Meant for a machine whose cores other processes take: a
	// process on one P then gets a single thread's share of them, and
	// neither its CPU nor its goroutines' scheduling latency show that it
	// is behind (measured: 0.35 cores and a p90 of 20 µs under two busy
	// loops, the broker's queue growing). Not enough there: the messages
	// may wait in the broker and the sockets instead, as in one CI run;
	// UpWait covers that case.
	UpBacklog int
	// UpWait gives the default back too when, in one window on one P, the
	// process's threads spent more than this share of it runnable but
	// waiting for a CPU (the kernel's run-queue delay, summed over
	// threads, /proc/self/task/*/schedstat): other processes hold the
	// cores, and one thread's share of them is too little. Measured on
	// one P: 0.25–0.30 at 1,000 msg/s on the benchmark rig (its load
	// generator and broker on the same two cores), 0.60 under a flood
	// with two busy loops on the machine. Read only above 0.1 cores.
	UpWait float64
	// UpLatency gives the default back too when, in one window on one P,
	// the 90th percentile of the time goroutines waited to run
	// (/sched/latencies:seconds) exceeds it: the one P is a queue.
	UpLatency time.Duration
	// Dwell is how long after giving the default back the Governor stays
	// there, whatever the load: a load that costs more on one P than the
	// thresholds' band cannot make it flap faster than this.
	Dwell time.Duration
}

// DefaultConfig returns the thresholds measured on the benchmark machine
// (docs/PERFORMANCE.md): 1,000 msg/s cost the gateway 0.44–0.50 cores on
// two Ps and 0.35 on one; a gateway saturated on one P used 0.68.
func DefaultConfig() Config {
	return Config{
		Window:    time.Second,
		Down:      0.55,
		Hold:      2 * time.Second,
		Up:        0.6,
		UpBacklog: 128,
		UpWait:    0.5,
		UpLatency: time.Millisecond,
		Dwell:     30 * time.Second,
	}
}

// Sample is what the Governor sees of one window.
type Sample struct {
	// Elapsed is the window's length, CPU the process's CPU time in it.
	Elapsed, CPU time.Duration
	// SchedP90 is the 90th percentile of the scheduling latency in the
	// window; 0 when too few goroutines were sampled to tell.
	SchedP90 time.Duration
	// Backlog is the work waiting at the window's end (messages).
	Backlog int
	// Waited is how long the process's threads waited for a CPU in the
	// window (summed over threads); 0 when not read.
	Waited time.Duration
}

// WaitShare is Waited as a share of the window.
func (s Sample) WaitShare() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Waited) / float64(s.Elapsed)
}

// Cores is the CPU the process used in the window, in cores.
func (s Sample) Cores() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.CPU) / float64(s.Elapsed)
}

// Governor decides, one window at a time, whether the process should run
// on one P or on the default. Not safe for concurrent use.
type Governor struct {
	cfg   Config
	one   bool          // on one P now
	low   time.Duration // how long the load has been below Down
	dwell time.Duration // left of the Dwell after the last rise
}

// NewGovernor returns a Governor that starts on the default.
func NewGovernor(cfg Config) *Governor { return &Governor{cfg: cfg} }

// One reports whether the Governor is on one P.
func (g *Governor) One() bool { return g.one }

// Next takes one window's sample and returns whether the process should
// now run on one P.
func (g *Governor) Next(s Sample) bool {
	cores := s.Cores()
	if g.one {
		if cores > g.cfg.Up || g.behind(s) ||
			(g.cfg.UpLatency > 0 && s.SchedP90 > g.cfg.UpLatency) ||
			(g.cfg.UpWait > 0 && s.WaitShare() > g.cfg.UpWait) {
			g.one, g.low, g.dwell = false, 0, g.cfg.Dwell
		}
		return g.one
	}
	if g.dwell > 0 {
		g.dwell -= s.Elapsed
		return false
	}
	// The run-queue wait is no reason to stay: on the default it counts
	// more threads (at 1,000 msg/s on the rig it kept two Ps).
	if cores >= g.cfg.Down || g.behind(s) {
		g.low = 0
		return false
	}
	g.low += s.Elapsed
	if g.low >= g.cfg.Hold {
		g.one, g.low = true, 0
	}
	return g.one
}

// behind reports whether at least UpBacklog messages wait: a reason to
// rise on one P, and to stay on the default.
func (g *Governor) behind(s Sample) bool {
	return g.cfg.UpBacklog > 0 && s.Backlog >= g.cfg.UpBacklog
}

// Run samples the process every cfg.Window and applies the Governor's
// answer until ctx is cancelled, then gives the default back. It returns
// at once when the GOMAXPROCS environment variable is set (the operator
// chose) or the runtime's default is 1. log gets one line per change (debug) and the
// start (info). backlog, when not nil, is the work waiting right now
// (Sample.Backlog); it must be cheap and safe to call from another
// goroutine.
func Run(ctx context.Context, cfg Config, log *zap.Logger, backlog func() int) {
	switch {
	case os.Getenv("GOMAXPROCS") != "":
		log.Info("GOMAXPROCS set by the environment; pipeline.adaptive_procs stays off", zap.Int("gomaxprocs", runtime.GOMAXPROCS(0)))
		return
	case runtime.GOMAXPROCS(0) < 2:
		log.Info("adaptive GOMAXPROCS: nothing to adapt", zap.Int("default", runtime.GOMAXPROCS(0)))
		return
	}
	log.Info("adaptive GOMAXPROCS: one P while lightly loaded", zap.Int("default", runtime.GOMAXPROCS(0)))
	g := NewGovernor(cfg)
	lat := newSchedLatency()
	last, lastCPU := time.Now(), processCPU()
	var wait runqWait
	t, stop := tick.Aligned(cfg.Window)
	defer stop()
	defer func() {
		if g.One() {
			runtime.SetDefaultGOMAXPROCS()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			cpu := processCPU()
			s := Sample{Elapsed: now.Sub(last), CPU: cpu - lastCPU}
			if backlog != nil {
				s.Backlog = backlog()
			}
			if s.Cores() >= latencyFloor {
				s.SchedP90 = lat.p90()
				s.Waited = wait.since()
			} else {
				// Idle, nothing queues: neither is worth a read (the
				// histogram's next read spans the idle windows; the
				// run-queue wait starts again from its next read).
				wait.reset()
			}
			last, lastCPU = now, cpu
			was := g.One()
			if one := g.Next(s); one != was {
				if one {
					runtime.GOMAXPROCS(1)
				} else {
					runtime.SetDefaultGOMAXPROCS()
				}
				log.Debug("GOMAXPROCS changed", zap.Int("gomaxprocs", runtime.GOMAXPROCS(0)),
					zap.Float64("cores", s.Cores()), zap.Duration("sched_p90", s.SchedP90), zap.Int("backlog", s.Backlog),
					zap.Float64("run_queue_wait", s.WaitShare()))
			}
		}
	}
}

// latencyFloor is the load, in cores, below which Run reads neither the
// scheduling latency nor the run-queue wait: nothing waits for a P that
// is idle nine tenths of the time, and an idle gateway is spared the
// reads.
const latencyFloor = 0.1

// runqWait reads the process's threads' run-queue delay (the second field
// of /proc/self/task/*/schedstat, in ns) and reports what was added since
// the last read.
type runqWait struct {
	last  int64
	valid bool
}

// since returns the wait added since the last read, 0 on the first read
// after reset (or when it cannot be read: no schedstat, a thread gone).
func (w *runqWait) since() time.Duration {
	now, ok := threadsWaited()
	if !ok {
		w.valid = false
		return 0
	}
	d := now - w.last
	prev := w.valid
	w.last, w.valid = now, true
	if !prev || d < 0 {
		return 0
	}
	return time.Duration(d)
}

func (w *runqWait) reset() { w.valid = false }

func threadsWaited() (int64, bool) {
	paths, err := filepath.Glob("/proc/self/task/[0-9]*/schedstat")
	if err != nil || len(paths) == 0 {
		return 0, false
	}
	var sum int64
	for _, p := range paths {
		b, err := os.ReadFile(p) //nolint:gosec // G304: a /proc path made here
		if err != nil {
			continue // the thread exited meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			return 0, false
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, false
		}
		sum += v
	}
	return sum, true
}

// processCPU is the process's user + system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// schedLatency reads /sched/latencies:seconds and reports the 90th
// percentile of what was added since the last read.
type schedLatency struct {
	s    []metrics.Sample
	prev []uint64
}

const schedLatencies = "/sched/latencies:seconds"

// minSamples is the fewest new observations p90 judges by: the runtime
// samples one goroutine transition in eight.
const minSamples = 50

func newSchedLatency() *schedLatency {
	l := &schedLatency{s: []metrics.Sample{{Name: schedLatencies}}}
	l.p90()
	return l
}

func (l *schedLatency) p90() time.Duration {
	metrics.Read(l.s)
	if l.s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := l.s[0].Value.Float64Histogram()
	return percentile(h.Counts, l.swap(h.Counts), h.Buckets, 0.9)
}

// swap keeps counts for the next read and returns the previous ones.
func (l *schedLatency) swap(counts []uint64) []uint64 {
	prev := l.prev
	l.prev = append(l.prev[:0:0], counts...)
	return prev
}

// percentile returns the lower bound of the bucket holding the q-th
// quantile of counts minus prev (Buckets has len(counts)+1 boundaries, in
// seconds), or 0 with fewer than minSamples new observations.
func percentile(counts, prev []uint64, buckets []float64, q float64) time.Duration {
	if len(prev) != len(counts) {
		return 0
	}
	var total uint64
	for i := range counts {
		total += counts[i] - prev[i]
	}
	if total < minSamples {
		return 0
	}
	want := uint64(q * float64(total))
	var seen uint64
	for i := range counts {
		seen += counts[i] - prev[i]
		if seen > want {
			lo := buckets[i]
			if lo < 0 { // the first bucket starts at -Inf
				lo = 0
			}
			return time.Duration(lo * float64(time.Second))
		}
	}
	return 0
}
