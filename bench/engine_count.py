#!/usr/bin/env python3
"""Total instructions callgrind counts for `pipeline-count h2 PORT BATCHES`: the pipeline's JSON
batches through the HTTP/2 engine (libnghttp2, NIO) to the benchmark's nginx over h2c, started here
as bench/run.py starts it. Kernel time is not counted; the engine's user-space work is, exactly,
where wall time and CPU time on this VM move by a tenth between runs.
With ENGINE h1, the same batches go through the libcurl engine to nginx's HTTP/1.1 port; with
h2tls, through the HTTP/2 engine over TLS to nginx's h2 port.
Usage: python3 bench/engine_count.py COUNTED_BINARY BATCHES [h2|h1] (run by bench/pipeline.sh)"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import run  # noqa: E402

binary, batches = sys.argv[1], sys.argv[2]
engine = sys.argv[3] if len(sys.argv) > 3 else "h2"
env = run.Env()
try:
    out = os.path.join(env.dir, "callgrind.out")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, engine, str({"h2": env.h2c, "h1": env.h1, "h2tls": env.tls}[engine]), batches],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env={**os.environ, "SWIFT_DETERMINISTIC_HASHING": "1", "SHEAF_CA_FILE": os.path.join(env.dir, "ca.pem")})
    with open(out) as f:
        print(next(line.split()[1] for line in f if line.startswith("summary:")))
finally:
    env.close()
