#!/usr/bin/env bash
# The in-process pipeline benchmark (bench/pipeline/, issue 13): ordo-one/benchmark's run of the
# JSON, XML and NDJSON pipelines (mallocs, CPU and wall time per item), checked against the
# stored thresholds in bench/pipeline/Thresholds (exit 1 on a regression), then instructions
# per item counted by valgrind's callgrind, which needs no hardware counters.
# `bench/pipeline.sh update` stores the current figures as the new thresholds instead.
set -euo pipefail
cd "$(dirname "$0")/pipeline"
scratch=../../.build-pipeline
# Package.swift reaches the repository through this link (see there why).
mkdir -p "$scratch" && ln -sfn .. "$scratch/sheaf"
flags=(--scratch-path "$scratch/build")

if [ "${1:-}" = update ]; then
    swift package "${flags[@]}" --disable-sandbox --allow-writing-to-package-directory benchmark thresholds update
    exit 0
fi
status=0
log=$(mktemp)
swift package "${flags[@]}" --disable-sandbox benchmark thresholds check --format markdown >"$log" 2>&1 || status=$?
grep -v "ETA: " "$log" || true
# Better than stored is not a failure (the tool exits non-zero for it too): worth `bench/pipeline.sh update`.
if [ "$status" != 0 ] && ! grep -q "benchmarkThresholdImprovement" "$log"; then
    echo "pipeline benchmark: regression against bench/pipeline/Thresholds (exit $status)"; rm -f "$log"; exit 1
fi
rm -f "$log"

swift build "${flags[@]}" -c release --product pipeline-count >/dev/null
bin=$(swift build "${flags[@]}" -c release --show-bin-path)
command -v valgrind >/dev/null || { echo "valgrind is missing: no instruction counts"; exit 0; }
# Debian's valgrind gives up on the debug info Swift 6.3 writes: it counts a stripped copy.
counted="$scratch/pipeline-count.stripped"
strip -g -o "$counted" "$bin/pipeline-count"
instructions() {  # total instructions callgrind counts for `pipeline-count FORMAT BATCHES`
    local out; out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" "$counted" "$1" "$2" >/dev/null 2>&1
    awk '/^summary:/ { print $2 }' "$out"; rm -f "$out"
}
# Both runs do 2 batches first, so one-time costs (the dynamic linker binding symbols, runtime
# caches) fall out of the difference and only the steady state is counted.
batches=20 warm=2
echo
echo "| pipeline | instructions per item (callgrind, ($((warm + batches)) batches − $warm) / ($batches × 1000)) |"
echo "| --- | ---: |"
for format in json xml ndjson; do
    base=$(instructions "$format" "$warm") run=$(instructions "$format" "$((warm + batches))")
    echo "| $format 207 | $(( (run - base) / (batches * 1000) )) |"
done
