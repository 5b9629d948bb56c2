// Package perf is iotgw's end-to-end benchmark: the real `iotgw serve`,
// the real Mosquitto with the project's config, `iotgw sim load` as the
// devices, and, in this process, an HTTP sink backend and a bare Paho
// subscriber that record when each message arrives.
//
// BenchmarkEndToEnd (run by `make bench` through scripts/bench.sh) measures
// in one run the broker's own limit, the gateway unpaced and paced, its
// memory per remembered message id and how it scales with the number of
// devices; it prints markdown tables and writes the results as JSON (see
// docs/PERFORMANCE.md). BenchmarkScaleOut (issue 11, `make bench` and
// `make bench-scale`) sends one load through one gateway on SQLite, then
// through 1, 2 and 3 gateways sharing a new database on the machine's
// PostgreSQL and a broker share group, and adds PostgreSQL's CPU, commits
// and messages per commit. TestSmoke and TestScaleOutSmoke run the same
// measuring code at a tiny scale in `make test`, so it cannot rot
// unnoticed.
//
// The pieces, in the order a measurement uses them:
//
//	Rig         binary, PKI with one certificate per device, registries, broker
//	Gateway     an `iotgw serve` process: start, stop, CPU, RSS, heap, metrics
//	Sink        the HTTP backend; records each message's arrival
//	Subscriber  the bare Paho consumer of the broker-limit runs
//	Recorder    counts every (device, seq) exactly once, keeps latencies
//	Rig.Load    one `iotgw sim load` process and its JSON summary
//	Postgres    the scale-out's server: its databases, statistics and CPU
//
// Nothing here asserts a timing: the checks are on counts (every message
// arrived exactly once, every reply verified), and a failed check fails
// the run.
package perf
