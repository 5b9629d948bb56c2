#!/bin/sh
# mutants.sh: shows that the simulation of the delivery core bites. Each
# known bug is kept as a patch in pkg/lease/sim/testdata/mutants/; for
# each, this applies it (git apply), runs the simulation (the "Seeds: N"
# its patch names, default 2000; SEEDS=N overrides), expects it to FAIL,
# and reverts the patch. Each patch says what it puts back ("Mutant:");
# one that cannot break an invariant while the code around it holds (an
# equivalent mutant) says "Expect: survive", and its survival is no failure. It prints, per
# mutant, the first failing seed and the invariant it broke; it exits 1 if
# a mutant survived or a patch no longer applies. A mutant of the model
# (memstore) is also run against the conformance suite (leasetest), which
# must catch it too.
#
#   scripts/mutants.sh                 # every mutant
#   SEEDS=500 scripts/mutants.sh b c   # mutants whose names start with b or c
#
# It changes files in the working tree while it runs: run it on a clean
# tree, and let it finish (Ctrl-C reverts the patch in hand).
set -u
cd "$(dirname "$0")/.."
GO=${GO:-go}
dir=pkg/lease/sim/testdata/mutants
status=0
current=""
trap 'if [ -n "$current" ]; then git apply -R "$current"; fi; exit 130' INT TERM

for p in "$dir"/*.patch; do
	name=$(basename "$p" .patch)
	if [ $# -gt 0 ]; then
		want=0
		for prefix in "$@"; do
			case "$name" in "$prefix"*) want=1 ;; esac
		done
		[ $want = 1 ] || continue
	fi
	if ! git apply --check "$p" 2>/dev/null; then
		echo "$name: DOES NOT APPLY (the code moved on: remake the patch)"
		status=1
		continue
	fi
	# A patch may say how many seeds it needs ("Seeds: N" above its diff);
	# SEEDS, when set, is used for every mutant instead.
	seeds=${SEEDS:-$(sed -n 's/^Seeds: *\([0-9]*\)$/\1/p' "$p" | head -1)}
	seeds=${seeds:-2000}
	git apply "$p"
	current=$p
	out=$($GO test -count=1 -timeout 30m ./pkg/lease/sim -run TestSim -seeds="$seeds" -failfast 2>&1)
	rc=$?
	suite=""
	if grep -q memstore "$p"; then
		if $GO test -count=1 ./pkg/lease/leasetest -run TestMemstore >/dev/null 2>&1; then
			suite="; the conformance suite MISSED it"
		else
			suite="; the conformance suite caught it too"
		fi
	fi
	git apply -R "$p"
	current=""
	expect=$(sed -n 's/^Expect: *//p' "$p" | head -1)
	if [ $rc -eq 0 ]; then
		if [ "$expect" = survive ]; then
			echo "$name: survived $seeds seeds, as expected (an equivalent mutant: see its patch)$suite"
		else
			echo "$name: SURVIVED $seeds seeds$suite"
			status=1
		fi
		continue
	fi
	# The lowest failing seed (parallel subtests may report a later one first).
	seed=$(printf '%s\n' "$out" | sed -n 's/.*sim_test.go:[0-9]*: seed \([0-9]*\):.*/\1/p' | sort -n | head -1)
	if [ -z "$seed" ]; then
		echo "$name: FAILED to build or run:"
		printf '%s\n' "$out" | head -20
		status=1
		continue
	fi
	why=$(printf '%s\n' "$out" | awk -v s="seed $seed: " '
		index($0, s) { w = substr($0, index($0, s) + length(s)); if (w != "invariant broken") { print w; exit }; f = 1; next }
		f && /^ *t=/ { sub(/^ */, ""); print; exit }')
	echo "$name: killed at seed $seed: $why$suite"
done
exit $status
