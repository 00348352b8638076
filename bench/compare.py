#!/usr/bin/env python3
"""Builds side by side on one route: each build gets its own Sheaf with bench/run.py's
configuration, and rounds of 4 clients posting 1000-item batches for BENCH_SECONDS (default 5)
alternate between them, so drift hits all alike. Prints each build's items/s and Sheaf CPU per
item (median of the rounds, min–max) and its ratio to the first build.
Usage: python3 bench/compare.py ROUTE ROUNDS LABEL=BINARY [LABEL=BINARY ...]
(BENCH_PIN=0 puts nginx, every Sheaf and the load generator on CPU 0: steadier, see run.py's placement section)
(routes: /users h2c, /h2tls h2 over TLS, /h1 and /h1tls HTTP/1.1 through libcurl)"""
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
import run  # noqa: E402

route, rounds = sys.argv[1], int(sys.argv[2])
builds = [argument.split("=", 1) for argument in sys.argv[3:]]
env = run.Env()
try:
    config = open(os.path.join(env.dir, "sheaf.yaml")).read()
    body = run.batch_body(env)
    variants = []
    for label, binary in builds:
        port = run.free_port()
        path = os.path.join(env.dir, f"compare-{len(variants)}.yaml")
        with open(path, "w") as f:
            f.write(re.sub(r'listen: "127\.0\.0\.1:\d+"', f'listen: "127.0.0.1:{port}"', config))
        proc = env.spawn([binary, "serve", "--config", path, "--log-level", "warning"], port)
        run.post_batch(port, route, 1000)  # connections up before the first round
        variants.append((label, port, proc))
    # BENCH_PIN=CPUS pins nginx, every Sheaf and the load generator to CPUS (say 0): no
    # cross-core wake-ups, whose share moves with where the scheduler puts each thread.
    pinned = os.environ.get("BENCH_PIN")
    if pinned:
        if not run.can_pin():
            raise SystemExit("BENCH_PIN needs CPUs 0 and 1, taskset and pgrep (make bench-deps)")
        for pid in [env.nginx.pid] + [proc.pid for _, _, proc in variants]:
            run.pin(pid, pinned)
    results = {label: ([], []) for label, _, _ in variants}
    for number in range(rounds):
        for label, port, proc in (variants if number % 2 == 0 else variants[::-1]):
            c0 = run.cpu_seconds(proc.pid)
            rps, ok, _ = run.h2load(["-c4", "-m1", "-D", os.environ.get("BENCH_SECONDS", "5"), "-d", body,
                                     "-H", "content-type: application/json", f"http://127.0.0.1:{port}{route}"], cpus=pinned)
            if not ok:
                raise SystemExit(f"{label}: no batch succeeded in round {number + 1}")
            results[label][0].append(rps * 1000)
            results[label][1].append((run.cpu_seconds(proc.pid) - c0) / (ok * 1000) * 1e6)
    first = None
    for label, (items, cpu) in results.items():
        median = statistics.median(cpu)
        first = first or median
        print(f"{route} {label}: {statistics.median(items):.0f} items/s, {median:.2f} µs/item "
              f"({min(cpu):.2f}–{max(cpu):.2f}), {median / first:.3f} × {variants[0][0]}")
finally:
    env.close()
