#!/usr/bin/env bash
# Builds the libFuzzer targets of Fuzz/Package.swift with AddressSanitizer into .build-fuzz, runs
# each for $1 seconds (default 60) from its seed corpus (Fuzz/corpus/TARGET) plus what earlier
# runs found (.build-fuzz/corpus/TARGET), and prints per target: executions, coverage (cov and
# ft from libFuzzer's last status line) and whether it crashed. Exits 1 when one did.
# TARGETS="FuzzPaths FuzzAccept" limits the run to those targets.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
targets=${TARGETS:-"FuzzJSONParser FuzzJSONBatch FuzzXMLBatch FuzzPaths FuzzConfig FuzzAccept FuzzHTTP2"}
scratch=../.build-fuzz
# -parse-as-library: a one-file executable would otherwise be top-level code whose own main
# replaces libFuzzer's.
flags=(--scratch-path "$scratch" -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library)

# Fuzz/Package.swift reaches the repository through this link (see there why).
mkdir -p "$scratch" && ln -sfn .. "$scratch/sheaf"
swift build "${flags[@]}" || exit 1
bin=$(swift build "${flags[@]}" --show-bin-path)

# Leaks are checked (LeakSanitizer runs after each input that allocated more than it freed).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
# Swift's own crash backtracer reads the stack in ways AddressSanitizer reports as a second,
# bogus error (stack-buffer-underflow in memserver_read); libFuzzer prints the stack already.
export SWIFT_BACKTRACE=enable=no
summary=()
failed=0
for target in $targets; do
    [ -x "$bin/$target" ] || { echo "no such target: $target"; failed=1; continue; }
    work="$scratch/corpus/$target" artifacts="$scratch/artifacts/$target"
    log="$scratch/logs/$target.log"
    mkdir -p "$work" "$artifacts" "$(dirname "$log")"
    rm -f "$artifacts"/crash-* "$artifacts"/leak-* "$artifacts"/timeout-* "$artifacts"/oom-*
    echo "== $target: ${seconds}s"
    # New inputs go into the first directory; the committed seeds stay as they are.
    "$bin/$target" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" "$work" "corpus/$target" >"$log" 2>&1
    rc=$?
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    status=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    found=$(ls "$artifacts" 2>/dev/null | tr '\n' ' ')
    if [ -n "$found" ] || [ "$rc" != 0 ]; then
        verdict="CRASH ($found; exit $rc; log $log)"
        failed=1
        grep -m3 -E 'ERROR|Fatal error|invariant broken' "$log" | sed 's/^/    /'
    else
        verdict="no crash"
    fi
    line="$target: ${seconds}s, ${executions:-?} executions, cov ${cov:-?}, ft ${ft:-?}, $verdict"
    echo "$line"
    summary+=("$line")
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $failed
