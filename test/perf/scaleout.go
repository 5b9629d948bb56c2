package perf

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/storage"
)

// ScaleOutPlan sizes the scale-out runs (issue 11): one gateway on SQLite,
// then 1, 2, … gateways sharing one PostgreSQL database and one share
// group of the broker, each row the same load on new gateways and, for
// PostgreSQL, a new database.
type ScaleOutPlan struct {
	// Devices publish Messages each in every row, unpaced, in one chunk.
	Devices  int `json:"devices"`
	Messages int `json:"messages_per_device"`
	// WarmupMessages per device go through each row's gateways first.
	WarmupMessages int `json:"warmup_messages_per_device"`
	// Gateways are the PostgreSQL rows' gateway counts.
	Gateways []int `json:"postgres_gateways"`
	// StatsSettle is the wait after the warm-up before PostgreSQL's
	// counters are read, so that they hold all of the warm-up (longer
	// than pgStatsIdle for exact commit counts; 0 in the smoke plan).
	StatsSettle time.Duration `json:"stats_settle_ns"`
}

// DefaultScaleOutPlan is `make bench-scale` (and the scale-out part of
// `make bench`): about 2 minutes on the 2-core machine of
// docs/PERFORMANCE.md.
func DefaultScaleOutPlan() ScaleOutPlan {
	return ScaleOutPlan{Devices: 100, Messages: 300, WarmupMessages: 20, Gateways: []int{1, 2, 3}, StatsSettle: pgStatsIdle + time.Second}
}

// SmokeScaleOutPlan runs every row of the scale-out at a tiny scale.
func SmokeScaleOutPlan() ScaleOutPlan {
	return ScaleOutPlan{Devices: 4, Messages: 50, WarmupMessages: 5, Gateways: []int{1, 2}}
}

// ScaleOutResults is everything one scale-out run measured.
type ScaleOutResults struct {
	Date        string       `json:"date"`
	StartedAt   string       `json:"started_at"`
	WallSeconds float64      `json:"wall_seconds"`
	LoadAvgEnd  string       `json:"loadavg_at_end"`
	Machine     Machine      `json:"machine"`
	Plan        ScaleOutPlan `json:"plan"`
	// Postgres is the server's version.
	Postgres string `json:"postgres_version"`
	// Gateway describes the gateways' configuration.
	Gateway string        `json:"gateway_config"`
	Rows    []ScaleOutRow `json:"rows"`
	// Problems lists what looked wrong without failing the run.
	Problems []string `json:"problems"`
}

// ScaleOutRow is one row: Gateways gateways on Engine.
type ScaleOutRow struct {
	// Engine is storage.engine: "sqlite" or "postgres".
	Engine   string `json:"engine"`
	Gateways int    `json:"gateways"`
	// Run is the measured load through all of them; Run.CPU.Postgres is
	// the server's CPU (in the SQLite row: other databases' work only).
	Run Run `json:"run"`
	// DB is the bench database's pg_stat_database change from after the
	// warm-up to after the gateways stopped (PostgreSQL rows).
	DB *DBStats `json:"pg_stat_database,omitempty"`
}

// Accepted returns the messages the row's gateways accepted (outbox rows
// inserted) in the measured run.
func (r ScaleOutRow) Accepted() float64 {
	return r.Run.Gateway.Counters["iotgw_messages_accepted_total"]
}

// AcceptBatch returns the mean messages per outbox transaction of the
// accepting path (the group commit): iotgw_outbox_commit_batch_size.
func (r ScaleOutRow) AcceptBatch() (mean, transactions float64) {
	c := r.Run.Gateway.Counters
	n := c["iotgw_outbox_commit_batch_size_count"]
	if n == 0 {
		return 0, 0
	}
	return c["iotgw_outbox_commit_batch_size_sum"] / n, n
}

// scaleOut runs a ScaleOutPlan.
type scaleOut struct {
	t    testing.TB
	ctx  context.Context
	plan ScaleOutPlan
	out  io.Writer
	rig  *Rig
	sink *Sink
	pg   *Postgres
	res  *ScaleOutResults
	t0   time.Time

	lines map[string]int // see logLine
	order []string
}

// RunScaleOut runs every row of p in one go, against the PostgreSQL at
// admin (a DSN), and returns the results; a failed check fails t.
func RunScaleOut(t testing.TB, p ScaleOutPlan, admin string, out io.Writer) *ScaleOutResults {
	t.Helper()
	s := &scaleOut{t: t, ctx: context.Background(), plan: p, out: out, t0: time.Now(), lines: map[string]int{}}
	s.res = &ScaleOutResults{Date: s.t0.Format(time.DateOnly), StartedAt: s.t0.Format(time.RFC3339), Machine: machineInfo(), Plan: p,
		Gateway: "as in the tables above (outbox.synchronous full, log.level warn, limits.device_rate 0); PostgreSQL rows: storage.engine postgres with the default " +
			"storage.lease, distinct mqtt.client_id values and one mqtt.share_group, so the broker splits the messages; the registry is copied into each run's PostgreSQL database (the SQLite row reads the SQLite file)"}
	pg, err := OpenPostgres(s.ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	s.pg, s.res.Postgres = pg, pg.Version
	s.rig = NewRig(t, p.Devices, p.Devices)
	s.sink = StartSink(t)
	s.logf("scale-out setup: %d devices, PostgreSQL %s (postmaster %d)", p.Devices, pg.Version, pg.Postmaster)

	s.row("sqlite", 1)
	for _, n := range p.Gateways {
		s.row("postgres", n)
	}
	if n := s.sink.Strays(); n > 0 {
		s.problem("sink: %d requests arrived between runs", n)
	}
	for _, l := range s.order {
		s.problem("gateway log at %s, by %d of the gateways started", l, s.lines[l])
	}
	s.res.WallSeconds = time.Since(s.t0).Seconds()
	s.res.LoadAvgEnd = readTrim("/proc/loadavg")
	return s.res
}

func (s *scaleOut) logf(format string, args ...any) {
	fmt.Fprintf(s.out, "[%6.1fs] %s\n", time.Since(s.t0).Seconds(), fmt.Sprintf(format, args...))
}

// logLine collects a gateway's log line above info, reported once per
// distinct line at the end with the number of gateways that logged it.
func (s *scaleOut) logLine(format string, args ...any) {
	if len(args) == 4 { // what, count, level, msg: see stopGateway
		key := fmt.Sprintf("%v: %q", args[2], args[3])
		if _, ok := s.lines[key]; !ok {
			s.order = append(s.order, key)
		}
		s.lines[key]++
		return
	}
	s.problem(format, args...)
}

func (s *scaleOut) problem(format string, args ...any) {
	p := fmt.Sprintf(format, args...)
	s.res.Problems = append(s.res.Problems, p)
	s.logf("PROBLEM: %s", p)
}

// row measures n new gateways on engine: warm-up, then the plan's load.
func (s *scaleOut) row(engine string, n int) {
	s.t.Helper()
	p := s.plan
	name := fmt.Sprintf("%s, %d gateway(s)", engine, n)
	reg := s.rig.Registry(s.t, p.Devices)
	var db string
	opts := GatewayOpts{Registered: p.Devices, Backend: s.sink.URL}
	if engine == "postgres" {
		var dsn string
		var err error
		if db, dsn, err = s.pg.CreateDatabase(s.ctx); err != nil {
			s.t.Fatal(err)
		}
		s.t.Cleanup(func() {
			if err := s.pg.DropDatabase(context.Background(), db); err != nil {
				s.t.Error(err)
			}
		})
		if err := copyRegistry(s.ctx, reg, dsn, s.rig.kek); err != nil {
			s.t.Fatal(err)
		}
		opts.MQTTExtra = "  share_group: iotgw-bench-share-group\n"
		opts.Extra = fmt.Sprintf("storage:\n  engine: postgres\n  dsn: %q\n", dsn)
	}
	var gws []*Gateway
	for i := range n {
		o := opts
		if engine == "postgres" {
			o.ClientID = fmt.Sprintf("%s-%d", gatewayClientID, i+1)
		}
		gws = append(gws, s.rig.StartGatewayOpts(s.t, o))
	}
	s.measure(RunSpec{Name: name + " warm-up", Load: LoadSpec{Devices: p.Devices, Messages: p.WarmupMessages, Replies: true, Registry: reg}}, gws)
	var before DBStats
	if db != "" {
		time.Sleep(p.StatsSettle)
		var err error
		if before, err = s.pg.Stats(s.ctx, db); err != nil {
			s.t.Fatal(err)
		}
	}
	run := s.measure(RunSpec{Name: name, Postgres: s.pg.CPU,
		Load: LoadSpec{Devices: p.Devices, Messages: p.Messages, Replies: true, Registry: reg}}, gws)
	row := ScaleOutRow{Engine: engine, Gateways: n, Run: run}
	for _, gw := range gws {
		stopGateway(s.t, gw, name, s.logLine)
	}
	if db != "" {
		after, err := s.pg.WaitGone(s.ctx, db, time.Minute)
		if err != nil {
			s.t.Fatal(err)
		}
		d := after.Sub(before)
		row.DB = &d
		if err := s.pg.DropDatabase(s.ctx, db); err != nil {
			s.t.Fatal(err)
		}
		mean, _ := row.AcceptBatch()
		s.logf("%s: PostgreSQL %d commits (%.0f/s), %.1f messages per commit, %.1f per accepting transaction; %.3f CPU-s / 1,000 msg; other databases %d commits",
			name, d.Commits, float64(d.Commits)/run.CPU.WallSeconds, row.Accepted()/float64(max(d.Commits, 1)), mean, Per1000(run.CPU.Postgres, run.Messages), d.OtherCommits)
	}
	if got := row.Accepted(); got != float64(run.Messages) {
		s.problem("%s: gateways accepted %.0f messages, want %d", name, got, run.Messages)
	}
	s.res.Rows = append(s.res.Rows, row)
}

// measure runs spec through gws and fails the test on a failed check.
func (s *scaleOut) measure(spec RunSpec, gws []*Gateway) Run {
	s.t.Helper()
	run, err := s.rig.MeasureFleet(s.ctx, spec, s.sink, gws)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, a := range run.Gateway.Anomalies() {
		s.problem("%s: gateway counter %s", spec.Name, a)
	}
	s.logf("%s: %d messages, %.0f msg/s replied, %.0f msg/s at the sink; gateways %.3f, PostgreSQL %.3f CPU-s / 1,000 msg; other load %.2f cores",
		spec.Name, run.Messages, run.RepliedThroughput, run.Throughput, Per1000(run.CPU.Gateway, run.Messages), Per1000(run.CPU.Postgres, run.Messages), run.CPU.OtherCores())
	return run
}

// Markdown returns the scale-out tables, ready to paste into
// docs/PERFORMANCE.md.
func (r *ScaleOutResults) Markdown() string {
	var b bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.Machine
	w("### 6. Scale-out on PostgreSQL\n\n")
	w("Run of %s (commit %s", r.StartedAt, m.Commit)
	if m.DiffSHA != "" {
		w(", diff %s", m.DiffSHA)
	}
	w("), %.0f s wall; %d cores (%s), PostgreSQL %s, load average at start / end %s / %s.\n\n", r.WallSeconds, m.NProc, m.CPUModel, r.Postgres, m.LoadAvg, r.LoadAvgEnd)
	p := r.Plan
	w("Every row: the same %s devices × %s messages (%s), unpaced, every reply verified, on new gateways after a warm-up of %d messages per device; "+
		"PostgreSQL rows on a new database each. Rows in the order run. Gateways: %s.\n\n",
		num(p.Devices), num(p.Messages), num(p.Devices*p.Messages), p.WarmupMessages, r.Gateway)
	w("**On %d cores this shows overhead, not speedup:** every gateway, Mosquitto, PostgreSQL, the load generator and the sink share the same cores, "+
		"so a second or third gateway adds processes competing for them and coordination through the database, and cannot add throughput. "+
		"What carries over to a machine per gateway is the CPU per message: the CPU-s per 1,000 messages columns.\n\n", m.NProc)

	var base float64
	if len(r.Rows) > 0 {
		base = r.Rows[0].Run.RepliedThroughput
	}
	w("| storage | gateways | msg/s replied | msg/s at sink | vs SQLite | gateways CPU-s / 1,000 msg, all | each gateway: received / forwarded / CPU-s per 1,000 msg | PostgreSQL CPU-s / 1,000 msg | broker CPU-s / 1,000 msg | other load (cores) |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range r.Rows {
		rn := row.Run
		ratio := 0.0
		if base > 0 {
			ratio = rn.RepliedThroughput / base
		}
		w("| %s | %d | **%s** | %s | %.2f× | **%.3f** | %s | **%.3f** | %.3f | %.2f |\n", row.Engine, row.Gateways, num(rn.RepliedThroughput), num(rn.Throughput), ratio,
			Per1000(rn.CPU.Gateway, rn.Messages), row.perGateway(), Per1000(rn.CPU.Postgres, rn.Messages), Per1000(rn.CPU.Broker, rn.Messages), rn.CPU.OtherCores())
	}
	w("\nEach gateway's CPU is per 1,000 messages of the whole load, so a row's add up to its \"all\" column; the broker splits the receiving evenly, but whichever gateway claims a device's rows forwards them, so the forwarding, and with it the CPU, need not split evenly. ")
	w("PostgreSQL CPU is the whole server's (postmaster, backends, WAL writer, checkpointer: `utime+stime+cutime+cstime` from `/proc`), which is shared with other databases; in the SQLite row it is only that other work, the noise floor.\n\n")

	w("| gateways | commits | commits/s | messages per commit | accepting transactions | messages per accepting transaction | rows inserted / updated / deleted per message | rollbacks | other databases' commits/s |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range r.Rows {
		if row.DB == nil {
			continue
		}
		d, rn := row.DB, row.Run
		acc := row.Accepted()
		mean, txs := row.AcceptBatch()
		per := func(v int64) string { return fmt.Sprintf("%.2f", float64(v)/max(acc, 1)) }
		w("| %d | %s | **%s** | **%.1f** | %s | %.1f | %s / %s / %s | %d | %s |\n", row.Gateways, num(d.Commits), num(float64(d.Commits)/rn.CPU.WallSeconds),
			acc/float64(max(d.Commits, 1)), num(txs), mean, per(d.Inserted), per(d.Updated), per(d.Deleted), d.Rollbacks, num(float64(d.OtherCommits)/rn.CPU.WallSeconds))
	}
	w("\nCommits are `xact_commit` of the bench database from after the warm-up (and %.0f s of waiting, so PostgreSQL's delayed statistics hold all of it) until every gateway had stopped and disconnected: "+
		"the measured load plus a few idle lease polls before the first message and during the stop; commits/s divides by the measured window (first arrival → last reply). "+
		"Messages per commit are the messages accepted (outbox rows inserted, `iotgw_messages_accepted_total`) over all commits: accepting, claiming, finishing and renewing. "+
		"Accepting transactions are the gateways' group commits (`iotgw_outbox_commit_batch_size`). Other databases' commits are the same server's other users meanwhile (approximate: their statistics lag).\n\n",
		r.Plan.StatsSettle.Seconds())
	if cp := r.capacity(); cp != "" {
		w("%s\n\n", cp)
	}
	if len(r.Problems) > 0 {
		w("Warnings and anomalies (none failed a check):\n\n")
		for _, pr := range r.Problems {
			w("- %s\n", pr)
		}
		w("\n")
	}
	return b.String()
}

// perGateway formats, for each gateway, its share of the messages
// received from the broker and of those forwarded to the backend, and its
// CPU per 1,000 messages of the whole load.
func (r ScaleOutRow) perGateway() string {
	rn := r.Run
	if rn.Gateway == nil || len(rn.Gateway.PerGateway) == 0 {
		return fmt.Sprintf("100%% / 100%% / %.3f", Per1000(rn.CPU.Gateway, rn.Messages))
	}
	parts := make([]string, len(rn.Gateway.PerGateway))
	for i, c := range rn.Gateway.PerGateway {
		share := func(v float64) float64 { return 100 * v / float64(max(rn.Messages, 1)) }
		parts[i] = fmt.Sprintf("%.0f%% / %.0f%% / %.3f", share(c["iotgw_messages_received_total"]), share(c[`iotgw_forward_total{result="ok"}`]),
			Per1000(rn.CPU.Gateways[i], rn.Messages))
	}
	return strings.Join(parts, "; ")
}

// capacity states the per-message cost of the largest PostgreSQL row as
// a capacity plan uses it.
func (r *ScaleOutResults) capacity() string {
	var row *ScaleOutRow
	for i := range r.Rows {
		if r.Rows[i].Engine == "postgres" && (row == nil || r.Rows[i].Gateways > row.Gateways) {
			row = &r.Rows[i]
		}
	}
	if row == nil || row.Run.Messages == 0 {
		return ""
	}
	rn := row.Run
	gw, pg := Per1000(rn.CPU.Gateway, rn.Messages), Per1000(rn.CPU.Postgres, rn.Messages)
	return fmt.Sprintf("**For a capacity plan** (from the %d-gateway row): each message costs %.3f CPU-s per 1,000 in the gateways together, wherever they run, and %.3f CPU-s per 1,000 in PostgreSQL; "+
		"so 10,000 msg/s needs about %.1f cores of gateways and %.1f cores of PostgreSQL, before headroom, Mosquitto (%.3f CPU-s per 1,000 here) and the backend.",
		row.Gateways, gw, pg, gw*10, pg*10, Per1000(rn.CPU.Broker, rn.Messages))
}

// copyRegistry registers every device of the SQLite registry at path in
// the PostgreSQL database dsn, with the same secret, sealed under kek as
// the bench's SQLite registry is.
func copyRegistry(ctx context.Context, path, dsn string, kek *registry.KEK) error {
	secrets, err := registry.DeviceSecrets(ctx, path, kek)
	if err != nil {
		return err
	}
	r, closeReg, err := storage.OpenRegistry(ctx, storage.Config{Engine: storage.Postgres, DSN: dsn}, "", registry.WithKEK(kek))
	if err != nil {
		return err
	}
	defer closeReg() //nolint:errcheck // each Add committed
	for id, secret := range secrets {
		if err := r.Add(ctx, id, string(secret)); err != nil {
			return fmt.Errorf("copy registry: %s: %w", id, err)
		}
	}
	return nil
}
