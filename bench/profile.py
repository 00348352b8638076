#!/usr/bin/env python3
"""Profiles Sheaf under the benchmark's sustained load with `perf record -e cpu-clock`
(hardware counters are often unavailable on VMs). Usage: python3 bench/profile.py [seconds] [route]
(route: /users h2c, /h2tls h2 over TLS, /h1 and /h1tls HTTP/1.1 through libcurl)"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import run  # noqa: E402

seconds = sys.argv[1] if len(sys.argv) > 1 else "6"
route = sys.argv[2] if len(sys.argv) > 2 else "/users"
env = run.Env()
try:
    run.post_batch(env.sheaf_port, route, 1000)
    body = run.batch_body(env)
    load = subprocess.Popen(["h2load", "-c4", "-m1", "-D", str(int(seconds) + 2), "-d", body, "-H",
                             "content-type: application/json", f"http://127.0.0.1:{env.sheaf_port}{route}"],
                            stdout=subprocess.DEVNULL)
    time.sleep(1)
    subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", os.environ.get("PERF_FREQ", "2000"), *os.environ.get("PERF_CALLGRAPH", "-g").split(), "-o", "/tmp/sheaf.perf",
                    "-p", str(env.sheaf.pid), "--", "sleep", seconds], check=True)
    load.wait()
finally:
    env.close()
print("perf report -i /tmp/sheaf.perf --no-children --percent-limit 0.7 --stdio -g none")
