#!/usr/bin/env bash
# make bench: the packages' micro-benchmarks, then the end-to-end benchmark
# of issue 5 (test/perf: real Mosquitto, real `iotgw serve`, `iotgw sim
# load`, a sink backend and a bare subscriber in the benchmark process).
#
# Then the steady-rate benchmark of issue 18 (test/perf BenchmarkSteady:
# 100 and 1,000 msg/s from 10 and 1,000 devices, the gateway's CPU per
# message next to its unpaced figure, the latency it adds, and an idle
# gateway with 10,000 devices registered). `bench.sh steady` runs that
# part alone (make bench-steady); BENCH_STEADY_SECONDS sets each rate's
# length (default 30), BENCH_BASELINE=<iotgw binary> measures an earlier
# build alternately with this one.
#
# Then the scale-out benchmark of issue 11 (test/perf BenchmarkScaleOut:
# one gateway on SQLite, 1, 2 and 3 on one PostgreSQL, the machine's at
# 127.0.0.1:5432 or $BENCH_PG). `bench.sh scale` runs that part alone
# (make bench-scale).
#
# Prints the benchmarks' progress and their markdown tables, and writes,
# for today's date:
#   bench/results/<YYYY-MM-DD>.json        every figure, the machine, the sizes
#   bench/results/<YYYY-MM-DD>.md          the tables (for docs/PERFORMANCE.md)
#   bench/results/<YYYY-MM-DD>.micro.txt   the micro-benchmarks' output
#   bench/results/<YYYY-MM-DD>.steady.json the steady rates' figures (.steady.md its tables)
#   bench/results/<YYYY-MM-DD>.scale.json  the scale-out's figures (.scale.md its tables)
# BENCH_OUT overrides the .json path (the others follow it).
# Takes about 14 minutes on 2 cores (the steady part about 7, the
# scale-out part about 2); see
# docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
out=$(realpath -m "${BENCH_OUT:-bench/results/$(date +%F).json}")
micro=${out%.json}.micro.txt
mkdir -p "$(dirname "$out")"
start=$(date +%s)

scale() {
  echo
  echo "== scale-out benchmark: test/perf BenchmarkScaleOut (results in ${out%.json}.scale.json)"
  BENCH_OUT=$out "$GO" test -count=1 -run '^$' -bench ScaleOut -benchtime 1x -timeout "${BENCH_TIMEOUT:-15m}" ./test/perf
}
steady() {
  echo
  echo "== steady-rate benchmark: test/perf BenchmarkSteady (results in ${out%.json}.steady.json)"
  BENCH_OUT=$out "$GO" test -count=1 -run '^$' -bench Steady -benchtime 1x -timeout "${BENCH_STEADY_TIMEOUT:-40m}" ./test/perf
}
case "${1:-}" in
scale | steady)
  "$1"
  echo "bench: done in $(( $(date +%s) - start ))s"
  exit 0
  ;;
esac

echo "== micro-benchmarks: go test -bench . ./pkg/... ./cmd/... (output in $micro)"
"$GO" test -count=1 -run '^$' -bench . -benchmem ./pkg/... ./cmd/... | tee "$micro"

echo
echo "== end-to-end benchmark: test/perf (results in $out)"
BENCH_OUT=$out BENCH_MICRO=$micro \
  "$GO" test -count=1 -run '^$' -bench EndToEnd -benchtime 1x -timeout "${BENCH_TIMEOUT:-15m}" ./test/perf
steady
scale

echo "bench: done in $(( $(date +%s) - start ))s"
