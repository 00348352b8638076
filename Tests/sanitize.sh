#!/usr/bin/env bash
# `make asan` / `make tsan`: the unit tests under a sanitizer (`address` or `thread`), then one
# short end-to-end batch against the sanitized `sheaf` (the repo's config.yaml with its embedded
# demo upstream, moved to free ports). Fails when a test fails or the sanitizer printed a report.
# Each sanitizer builds into its own scratch path (.build-asan, .build-tsan).
set -uo pipefail
cd "$(dirname "$0")/.."
sanitizer=${1:?usage: Tests/sanitize.sh address|thread}
case "$sanitizer" in
    address) scratch=.build-asan ;;
    thread) scratch=.build-tsan ;;
    *) echo "unknown sanitizer $sanitizer"; exit 2 ;;
esac
# Swift 5 language mode for every module: under -sanitize=thread the Swift 6.3 compiler reports
# a region-isolation error ("sending 'logger' risks causing data races") in swift-otel's
# OTelBatchLogRecordProcessor that it does not report without the sanitizer; in Swift 5 mode it is
# a warning. The mode changes compile-time diagnostics only, not the code the sanitizer checks.
flags=(--sanitize="$sanitizer" --scratch-path "$scratch" -Xswiftc -swift-version -Xswiftc 5)
# Suppressions live next to this script, each with its reason.
export TSAN_OPTIONS="${TSAN_OPTIONS:-} halt_on_error=0 suppressions=$PWD/Tests/tsan.supp"
# The unit tests: memory errors only. The test runner exits with event-loop groups, threads and
# channels its tests left running, all reported as leaks (FUZZING.md); ASAN_OPTIONS=detect_leaks=1
# make asan shows them. `sheaf` itself runs with leak detection (below).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-} suppressions=$PWD/Tests/lsan.supp"
report='ERROR: AddressSanitizer|ERROR: LeakSanitizer|WARNING: ThreadSanitizer|ERROR: ThreadSanitizer|runtime error:'
logs="$scratch/sanitize-logs"
mkdir -p "$logs"
failed=0

echo "== unit tests with --sanitize=$sanitizer"
swift build "${flags[@]}" --build-tests || exit 1
swift test "${flags[@]}" --skip-build --no-parallel 2>&1 | tee "$logs/unit.log"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "unit tests failed under $sanitizer"; failed=1; }
if grep -Eq "$report" "$logs/unit.log"; then
    echo "the $sanitizer sanitizer reported during the unit tests:"; grep -E -A3 "$report" "$logs/unit.log" | head -40
    failed=1
fi

echo "== end-to-end batch against the $sanitizer-sanitized sheaf"
bin=$(swift build "${flags[@]}" --show-bin-path)/sheaf
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
demo=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
config="$logs/config.yaml"
sed -e "s/127.0.0.1:8080/127.0.0.1:$port/" -e "s/127.0.0.1:9090/127.0.0.1:$demo/g" config.yaml >"$config"
# Leaks checked when sheaf exits after SIGTERM (with AddressSanitizer; harmless under TSan).
ASAN_OPTIONS=detect_leaks=1 "$bin" serve --config "$config" >"$logs/sheaf.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
answer=$(curl -s -X POST "http://127.0.0.1:$port/bulk/users" -H 'Content-Type: application/json' -d '{"ids":[1,2,13,999]}')
xml=$(curl -s -X POST "http://127.0.0.1:$port/bulk/docs/delete" -H 'Content-Type: application/json' \
      -H 'Accept: application/xml' -d '{"names":["a.pdf","locked-x","zzz"]}')
# A streamed body (chunked, 1000 ids): items start while it arrives.
python3 -c 'import json; print(json.dumps({"ids": list(range(1, 1001))}))' >"$logs/ids.json"
streamed=$(curl -s -X POST "http://127.0.0.1:$port/bulk/users" -H 'Content-Type: application/json' \
           -H 'Transfer-Encoding: chunked' -H 'Accept: application/x-ndjson' --data-binary @"$logs/ids.json")
kill -TERM "$pid"
wait "$pid"
echo "sheaf exited with $?"
echo "$answer" | grep -q '"summary":{"total":4,"succeeded":2,"failed":2' || { echo "unexpected 207: $answer"; failed=1; }
echo "$xml" | grep -q 'total="3" succeeded="1" failed="2"' || { echo "unexpected XML 207: $xml"; failed=1; }
echo "$streamed" | tail -1 | grep -q '"summary":{"total":1000,' || { echo "unexpected streamed 207's end: $(echo "$streamed" | tail -1)"; failed=1; }
if grep -Eq "$report" "$logs/sheaf.log"; then
    echo "the $sanitizer sanitizer reported while sheaf ran:"; grep -E -A20 "$report" "$logs/sheaf.log" | head -60
    failed=1
fi
[ "$failed" = 0 ] && echo "== $sanitizer: clean"
exit $failed
