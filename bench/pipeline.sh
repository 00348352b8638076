#!/usr/bin/env bash
# The in-process pipeline benchmark (bench/pipeline/, issue 13): ordo-one/benchmark's run of the
# JSON, XML and NDJSON pipelines (mallocs and wall time per item), checked against the stored
# thresholds in bench/pipeline/Thresholds, then instructions per item counted by valgrind's
# callgrind (no hardware counters needed, and exact where wall time on this VM moves by half
# between runs), checked against Thresholds/instructions.tsv; `h2` there is the JSON pipeline
# through the real HTTP/2 engine to nginx, `h2tls` the same over TLS, `h1` through the libcurl
# engine (bench/engine_count.py). Exit 1 on a regression.
# `bench/pipeline.sh update` stores the current figures as the new thresholds instead.
set -euo pipefail
cd "$(dirname "$0")/pipeline"
scratch=../../.build-pipeline
# Package.swift reaches the repository through this link (see there why).
mkdir -p "$scratch" && ln -sfn .. "$scratch/sheaf"
flags=(--scratch-path "$scratch/build")
mode=${1:-check}
status=0

if [ "$mode" = update ]; then
    swift package "${flags[@]}" --disable-sandbox --allow-writing-to-package-directory benchmark thresholds update
else
    log=$(mktemp)
    swift package "${flags[@]}" --disable-sandbox benchmark thresholds check --format markdown >"$log" 2>&1 || status=$?
    grep -v "ETA: " "$log" || true
    # Better than stored is not a failure (the tool exits non-zero for it too): worth `bench/pipeline.sh update`.
    if [ "$status" != 0 ] && ! grep -q "benchmarkThresholdImprovement" "$log"; then
        echo "pipeline benchmark: regression against bench/pipeline/Thresholds (exit $status)"
        status=1
    else
        status=0
    fi
    rm -f "$log"
fi

# Recompiled every time: SwiftPM misses a changed class layout in SheafCore (through the link),
# and a stale pipeline-count then allocates its transport too small.
touch Sources/SheafPipeline/Pipeline.swift Sources/pipeline-count/main.swift
swift build "${flags[@]}" -c release --product pipeline-count >/dev/null
bin=$(swift build "${flags[@]}" -c release --show-bin-path)
command -v valgrind >/dev/null || { echo "valgrind is missing: no instruction counts"; exit "$status"; }
# Debian's valgrind gives up on the debug info Swift 6.3 writes: it counts a stripped copy.
counted="$scratch/pipeline-count.stripped"
strip -g -o "$counted" "$bin/pipeline-count"
instructions() {  # total instructions callgrind counts for `pipeline-count FORMAT BATCHES`
    # h2, h1: the JSON pipeline through an engine to an nginx the helper starts.
    case "$1" in h2|h2tls|h1) python3 ../engine_count.py "$counted" "$2" "$1" 2>/dev/null; return ;; esac
    local out; out=$(mktemp)
    # Hashing seeded the same in every run: the counts then repeat to within a few instructions.
    SWIFT_DETERMINISTIC_HASHING=1 valgrind --tool=callgrind --callgrind-out-file="$out" "$counted" "$1" "$2" >/dev/null 2>&1
    awk '/^summary:/ { print $2 }' "$out"; rm -f "$out"
}
# Both runs do 2 batches first, so one-time costs (the dynamic linker binding symbols, runtime
# caches) fall out of the difference and only the steady state is counted.
batches=20 warm=2
stored=Thresholds/instructions.tsv
tolerance=3
measured=()
echo
echo "| pipeline | instructions per item (callgrind, ($((warm + batches)) batches − $warm) / ($batches × 1000)) | stored | |"
echo "| --- | ---: | ---: | --- |"
for format in json xml ndjson h2 h2tls h1; do
    base=$(instructions "$format" "$warm") run=$(instructions "$format" "$((warm + batches))")
    # An empty count (valgrind failed) would read as 0 and pass the gate.
    if [ -z "$base" ] || [ -z "$run" ]; then echo "| $format 207 | callgrind failed | | |"; status=1; continue; fi
    per_item=$(( (run - base) / (batches * 1000) ))
    measured+=("$format	$per_item")
    limit=$(awk -v f="$format" '$1 == f { print $2 }' "$stored" 2>/dev/null || true)
    verdict=""
    if [ "$mode" != update ] && [ -n "$limit" ]; then
        if [ "$per_item" -gt $(( limit * (100 + tolerance) / 100 )) ]; then verdict="worse by more than $tolerance %"; status=1; else verdict="ok"; fi
    fi
    case "$format" in
        h2) label="JSON 207 through the HTTP/2 engine to nginx (h2c)" ;;
        h2tls) label="JSON 207 through the HTTP/2 engine to nginx over TLS" ;;
        h1) label="JSON 207 through the libcurl engine to nginx (HTTP/1.1, 8 connections)" ;;
        *) label="$format 207" ;;
    esac
    echo "| $label | $per_item | ${limit:--} | $verdict |"
done
if [ "$mode" = update ]; then
    printf '%s\n' "${measured[@]}" >"$stored"
    echo "stored in bench/pipeline/$stored"
elif [ "$status" != 0 ]; then
    echo "pipeline benchmark: regression against bench/pipeline/Thresholds"
fi
exit "$status"
