#!/usr/bin/env bash
# make bench: the packages' micro-benchmarks, then the end-to-end benchmark
# of issue 5 (test/perf: real Mosquitto, real `iotgw serve`, `iotgw sim
# load`, a sink backend and a bare subscriber in the benchmark process).
#
# Prints the end-to-end benchmark's progress and its markdown tables, and
# writes, for today's date:
#   bench/results/<YYYY-MM-DD>.json        every figure, the machine, the sizes
#   bench/results/<YYYY-MM-DD>.md          the tables (for docs/PERFORMANCE.md)
#   bench/results/<YYYY-MM-DD>.micro.txt   the micro-benchmarks' output
# BENCH_OUT overrides the .json path (the others follow it).
# Takes about 5 minutes on 2 cores; see docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
out=$(realpath -m "${BENCH_OUT:-bench/results/$(date +%F).json}")
micro=${out%.json}.micro.txt
mkdir -p "$(dirname "$out")"
start=$(date +%s)

echo "== micro-benchmarks: go test -bench . ./pkg/... (output in $micro)"
"$GO" test -count=1 -run '^$' -bench . -benchmem ./pkg/... | tee "$micro"

echo
echo "== end-to-end benchmark: test/perf (results in $out)"
BENCH_OUT=$out BENCH_MICRO=$micro \
  "$GO" test -count=1 -run '^$' -bench EndToEnd -benchtime 1x -timeout "${BENCH_TIMEOUT:-15m}" ./test/perf

echo "bench: done in $(( $(date +%s) - start ))s"
