#!/usr/bin/env bash
# Runs the end-to-end and fault-injection tests (./test/...) verbosely into
# a log, prints the per-scenario lines and each test's verdict, and on
# failure prints the whole log (minus the === RUN noise). `go test ./...`
# alone would hide the scenario lines of a passing package.
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
log=$(mktemp "${TMPDIR:-/tmp}/iotgw-e2e.XXXXXX.log")
"$GO" test -count=1 -timeout "${E2E_TIMEOUT:-12m}" -v ./test/... >"$log" 2>&1
status=$?
if [ "$status" -eq 0 ]; then
  grep -E '^(scenario |--- |ok |FAIL)|SKIPPED:' "$log"
  rm -f "$log"
else
  grep -vE '^=== (RUN|PAUSE|CONT|NAME)' "$log"
  echo "e2e: FAILED (exit $status); full log: $log" >&2
fi
exit "$status"
