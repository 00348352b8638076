#!/usr/bin/env python3
"""Sheaf's side-by-side benchmark: one command (`make bench`), everything on loopback, every
process started here on a free port and stopped by pid, bounded in time.

Measured in one run, against the same nginx (one worker):
  1. Sheaf with an h2c upstream: batch wall time (N = 1, 100, 1000, 10000; JSON and XML),
     Sheaf's CPU per item (/proc/PID/stat), items/s under sustained load (h2load posting
     1000-item batches to Sheaf over h2c for a fixed time).
  2. The floor: h2load -c1 -m100 straight at nginx: requests/s, h2load's CPU per request.
  3. nghttpx (h2c front, h2 back, one worker) with h2load through it: its CPU per request.
  4. The client alone: N requests sequentially, and over HTTP/1.1 with 6 connections.
  5. With a 20 ms upstream: batch latency for N = 1, 100, 1000 against the 20 ms floor
     and against the client alone.
  6. Sheaf's peak RSS for a 100,000-item batch and at idle.
     And a 1,000,000-item batch streamed in: Sheaf's peak RSS above its RSS before, and when the
     first result arrives against when the last request byte is sent (`python3 bench/run.py
     stream` runs this row alone).
  7. A client hanging up on an 80,000-item batch: /healthz latency while Sheaf cancels it
     (`python3 bench/run.py cancel` runs this row alone, for 10k and 80k items).
  8. TLS and HTTP/1.1 upstreams (`python3 bench/run.py tls` runs this section alone): Sheaf's
     CPU per item over h2+TLS against h2load's per request over TLS; over HTTP/1.1 (libcurl),
     cleartext and TLS, against a second nginx proxying with proxy_pass over keep-alive
     HTTP/1.1 to the same upstream; and the CPU one new connection costs Sheaf, with and
     without TLS.
  9. Placed threads (`python3 bench/run.py placement` runs this section alone): sections 1–3's
     and 8's h2c and TLS CPU per item again, with the program measured alone on CPU 1 and its
     peers on CPU 0 ("apart"), and with everything on CPU 0 ("one core"): whether two programs
     that talk share a core moves h2load's own cost per request by up to 3x.
  10. Tracing (`python3 bench/run.py tracing`): Sheaf's CPU per item under the same sustained
     load with tracing off, with tracing on (exporting every span over OTLP/HTTP to a local
     sink), and, when SHEAF_BASE_BIN names a build from before tracing existed, that build:
     runs interleaved, so drift hits all three alike.
Writes bench/results/latest.md and prints it; BENCHMARKS.md holds the recorded runs.
"""
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("SHEAF_BIN", os.path.join(ROOT, ".build", "release", "sheaf"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
SUSTAIN_SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
TICK = os.sysconf("SC_CLK_TCK")
PAGE = 100  # bytes of JSON per item, roughly


def tool(name):
    """A peer's path; nginx and nghttpx live in /usr/sbin, which a user's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin") or name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening")


def cpu_seconds(pid):
    """user + system CPU of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu(pid):
    """CPU of a process and its descendants (nghttpx does its work in a forked worker)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
        todo.extend(c for c, parent in parents.items() if parent == p)
    return total


def rss_kib(pid, field="VmHWM"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def stop(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def med(values):
    return statistics.median(values), min(values), max(values)


def fmt(values, unit="", digits=1):
    m, lo, hi = med(values)
    return f"{m:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


NGINX = """
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
    default_type application/json;
    http2_max_concurrent_streams 1000;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{h2c} http2;
        listen 127.0.0.1:{h1};
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"name":"user number $1","email":"user$1@example.com","active":true}}'; }}
        location ~ ^/slow/(\\d+)$ {{ echo_sleep 0.02; echo '{{"id":$1,"name":"user number $1","email":"user$1@example.com"}}'; }}
        location ~ ^/hold/(\\d+)$ {{ echo_sleep 5; echo '{{"id":$1}}'; }}
    }}
    server {{
        listen 127.0.0.1:{tls} ssl http2;
        ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"name":"user number $1","email":"user$1@example.com","active":true}}'; }}
    }}
    server {{
        listen 127.0.0.1:{tls1} ssl;
        ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"name":"user number $1","email":"user$1@example.com","active":true}}'; }}
    }}
    # Connections that end after CHURN requests: what a new connection costs.
    server {{
        listen 127.0.0.1:{tls_churn} ssl http2;
        ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;
        keepalive_requests {churn};
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"name":"user number $1","email":"user$1@example.com","active":true}}'; }}
    }}
    server {{
        listen 127.0.0.1:{h2c_churn} http2;
        keepalive_requests {churn};
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"name":"user number $1","email":"user$1@example.com","active":true}}'; }}
    }}
}}
"""

# The per-request HTTP/1.1 proxy Sheaf's libcurl path is compared with: a second nginx (one
# worker, so its CPU is its own), h2c in front, keep-alive HTTP/1.1 to the upstream nginx.
NGINX_PROXY = """
worker_processes 1;
daemon off;
pid {d}/proxy.pid;
error_log {d}/proxy-error.log error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/pb; proxy_temp_path {d}/pp; fastcgi_temp_path {d}/pf; uwsgi_temp_path {d}/pu; scgi_temp_path {d}/ps;
    http2_max_concurrent_streams 1000;
    keepalive_requests 1000000;
    upstream plain {{ server 127.0.0.1:{h1}; keepalive 64; keepalive_requests 1000000; }}
    upstream tls {{ server 127.0.0.1:{tls1}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{px} http2;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /plain/ {{ proxy_pass http://plain/; }}
        location /tls/ {{ proxy_pass https://tls/; proxy_ssl_session_reuse on; }}
    }}
}}
"""
CHURN = 10


def make_certificates(directory):
    """A throw-away CA and a certificate for 127.0.0.1 (ca.pem, server.pem, server.key)."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=Sheaf bench CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(directory, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")


class Env:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sheaf-bench-")
        self.procs = []
        self.h2c, self.h1 = free_port(), free_port()
        self.tls, self.tls1, self.tls_churn, self.h2c_churn = free_port(), free_port(), free_port(), free_port()
        make_certificates(self.dir)
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX.format(d=self.dir, h2c=self.h2c, h1=self.h1, tls=self.tls, tls1=self.tls1,
                                 tls_churn=self.tls_churn, h2c_churn=self.h2c_churn, churn=CHURN))
        self.nginx = self.spawn([tool("nginx"), "-p", self.dir, "-c", conf], self.h2c)
        self.proxy_port = free_port()
        proxy_conf = os.path.join(self.dir, "proxy.conf")
        with open(proxy_conf, "w") as f:
            f.write(NGINX_PROXY.format(d=self.dir, h1=self.h1, tls1=self.tls1, px=self.proxy_port))
        self.proxy = self.spawn([tool("nginx"), "-p", self.dir, "-c", proxy_conf], self.proxy_port)
        self.sheaf_port = free_port()
        cfg = os.path.join(self.dir, "sheaf.yaml")
        # One fan-out route per TLS / HTTP/1.1 upstream, named after it (section 8).
        tls_routes = "".join(
            f"  - {{name: {name}, method: POST, path: /{name}, upstream: {name}, max_items: 100000, max_body_bytes: 16MiB,\n"
            f"      concurrency: {CHURN if '-' in name else 1000}, fan_out: {{items: \"\", method: GET, path: \"/users/{{item}}\"}}}}\n"
            for name in ("h1", "h1tls", "h2tls", "h2tls-keep", "h2tls-churn", "h2c-keep", "h2c-churn"))
        with open(cfg, "w") as f:
            f.write(f"""
listen: "127.0.0.1:{self.sheaf_port}"
upstreams:
  nginx:
    url: http://127.0.0.1:{self.h2c}
    protocol: h2c
    connections: 2
    timeout: 30s
  h1:
    url: http://127.0.0.1:{self.h1}
    protocol: http1
    connections: 64
    timeout: 30s
  h1tls:
    url: https://127.0.0.1:{self.tls1}
    protocol: http1
    ca_file: {self.dir}/ca.pem
    connections: 64
    timeout: 30s
  h2tls:
    url: https://127.0.0.1:{self.tls}
    protocol: h2
    ca_file: {self.dir}/ca.pem
    connections: 2
    timeout: 30s
  h2tls-keep:
    url: https://127.0.0.1:{self.tls}
    protocol: h2
    ca_file: {self.dir}/ca.pem
    connections: 1
    timeout: 30s
  h2tls-churn:
    url: https://127.0.0.1:{self.tls_churn}
    protocol: h2
    ca_file: {self.dir}/ca.pem
    connections: 1
    timeout: 30s
  h2c-keep:
    url: http://127.0.0.1:{self.h2c}
    protocol: h2c
    connections: 1
    timeout: 30s
  h2c-churn:
    url: http://127.0.0.1:{self.h2c_churn}
    protocol: h2c
    connections: 1
    timeout: 30s
routes:
{tls_routes}  - name: users
    method: POST
    path: /users
    upstream: nginx
    fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}
    concurrency: 1000
    max_items: 100000
    max_body_bytes: 16MiB
  - name: million
    method: POST
    path: /million
    upstream: nginx
    fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}
    concurrency: 1000
    max_items: 1000000
    max_body_bytes: 16MiB
  - name: slow
    method: POST
    path: /slow
    upstream: nginx
    fan_out: {{items: "", method: GET, path: "/slow/{{item}}"}}
    concurrency: 1000
    max_items: 100000
  - name: cancel
    method: POST
    path: /cancel
    upstream: nginx
    fan_out: {{items: "", method: GET, path: "/hold/{{item}}"}}
    concurrency: 10000
    max_items: 100000
    max_body_bytes: 16MiB
""")
        self.sheaf = self.spawn([BIN, "serve", "--config", cfg, "--log-level", "warning"], self.sheaf_port)
        self.nghttpx_port = free_port()
        open(os.path.join(self.dir, "none.conf"), "w").close()
        self.nghttpx = self.spawn([tool("nghttpx"), f"--frontend=127.0.0.1,{self.nghttpx_port};no-tls",
                                   f"--backend=127.0.0.1,{self.h2c};;proto=h2", "-n1", "--log-level=ERROR",
                                   f"--errorlog-file={self.dir}/nghttpx.log", "--accesslog-file=/dev/null",
                                   f"--pid-file={self.dir}/nghttpx.pid", "--no-ocsp",
                                   "--backend-http2-max-concurrent-streams=1000",
                                   f"--conf={self.dir}/none.conf"], self.nghttpx_port)

    def spawn(self, args, port):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, os.path.basename(args[0]) + ".err"), "w"))
        self.procs.append(p)
        wait_port(port, p)
        return p

    def close(self):
        for p in reversed(self.procs):
            stop(p)
        shutil.rmtree(self.dir, ignore_errors=True)


def streamed_batch(env, n):
    """One n-item batch streamed in (64 KiB writes, NDJSON 207 read at the same time): when the
    first result arrived against when the last request byte was sent, Sheaf's peak RSS above its
    RSS just before (VmHWM reset through clear_refs), and every item reported once."""
    pid = env.sheaf.pid
    body = ("[" + ",".join(str(1 + i % 100_000) for i in range(n)) + "]").encode()
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = rss_kib(pid, "VmRSS")
    sock = socket.create_connection(("127.0.0.1", env.sheaf_port))
    sock.settimeout(300)
    head = (f"POST /million HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Accept: application/x-ndjson\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    received = []
    first = [None]

    def read():
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return
            if first[0] is None and b'"status"' in data:
                first[0] = time.monotonic()
            received.append(data)

    reader = threading.Thread(target=read)
    start = time.monotonic()
    reader.start()
    sock.sendall(head)
    view = memoryview(body)
    for offset in range(0, len(body), 65536):
        sock.sendall(view[offset:offset + 65536])
    last_sent = time.monotonic()
    reader.join(timeout=300)
    ended = time.monotonic()
    sock.close()
    peak = rss_kib(pid, "VmHWM")
    raw = b"".join(received)
    _, _, chunked = raw.partition(b"\r\n\r\n")
    text, rest = bytearray(), memoryview(chunked)
    while True:  # de-chunk
        line_end = bytes(rest[:20]).index(b"\r\n")
        size = int(bytes(rest[:line_end]), 16)
        if size == 0:
            break
        text += rest[line_end + 2:line_end + 2 + size]
        rest = rest[line_end + 4 + size:]
    lines = bytes(text).splitlines()
    summary = json.loads(lines[-1])["summary"]
    ids = {json.loads(line)["id"] for line in lines[:-1]}
    assert summary["total"] == n and len(ids) == n == len(lines) - 1, (summary, len(ids))
    return {"first_ms": (first[0] - start) * 1000, "upload_ms": (last_sent - start) * 1000,
            "wall_s": ended - start, "peak_mib": (peak - before) / 1024, "body_mb": len(body) / 1e6,
            "out_mb": len(text) / 1e6, "succeeded": summary["succeeded"]}


def post_batch(port, path, n, accept="application/json", offset=1):
    body = json.dumps(list(range(offset, offset + n))).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t = time.perf_counter()
    c.request("POST", path, body=body, headers={"content-type": "application/json", "accept": accept})
    r = c.getresponse()
    data = r.read()
    elapsed = time.perf_counter() - t
    c.close()
    assert r.status == 207, (r.status, data[:200])
    return elapsed, data


def h2load(args, timeout=600, cpus=None):
    """(requests/s, requests that succeeded, h2load's CPU seconds); `cpus` pins it (taskset)."""
    before = children_cpu()
    out = subprocess.run((["taskset", "-c", cpus] if cpus else []) + ["h2load"] + args, capture_output=True, text=True, timeout=timeout)
    cpu = children_cpu() - before
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out.stdout)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out.stdout)
    if not m or not done:
        raise RuntimeError(out.stdout + out.stderr)
    return float(m.group(3)), int(done.group(2)), cpu


def h2load_wall(args):
    """Wall time in ms of one h2load run (connection set-up included)."""
    out = subprocess.run(["h2load"] + args, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"finished in ([\d.]+)(m?s)", out)
    if not m:
        raise RuntimeError(out)
    return float(m.group(1)) * (1 if m.group(2) == "ms" else 1000)


def batch_body(env):
    """The 1000-id JSON body every sustained run posts (a file, for h2load -d)."""
    body = os.path.join(env.dir, "batch.json")
    with open(body, "w") as f:
        json.dump(list(range(1, 1001)), f)
    return body


def sustained_round(env, path, body, accept=None):
    """One round of 4 clients posting 1000-item batches back to back for SUSTAIN_SECONDS:
    (items/s, Sheaf's CPU µs per item). A warm-up batch first: after a quiet second (the other
    side's round) Sheaf has given its freed memory back, and every round starts from the same heap."""
    post_batch(env.sheaf_port, path, 1000, accept or "application/json")
    c0 = cpu_seconds(env.sheaf.pid)
    extra = ["-H", f"accept: {accept}"] if accept else []
    rps, ok, _ = h2load(["-c4", "-m1", "-D", str(SUSTAIN_SECONDS), "-d", body, "-H", "content-type: application/json", *extra,
                         f"http://127.0.0.1:{env.sheaf_port}{path}"])
    return rps * 1000, (cpu_seconds(env.sheaf.pid) - c0) / (ok * 1000) * 1e6


def sustained_formats(env, path="/users"):
    """Sustained rounds with JSON and XML 207s interleaved round by round:
    {format: [Sheaf CPU µs per item per round]}."""
    body = batch_body(env)
    cpu = {"json": [], "xml": []}
    for _ in range(REPEAT):
        for name, accept in (("json", "application/json"), ("xml", "application/xml")):
            cpu[name].append(sustained_round(env, path, body, accept)[1])
    return cpu


def batch_cpu(env, path, n=5000, times=3):
    """Sheaf's CPU µs per item over `times` n-item batches posted one after another."""
    c0 = cpu_seconds(env.sheaf.pid)
    for i in range(times):
        post_batch(env.sheaf_port, path, n, offset=1 + i * n)
    return (cpu_seconds(env.sheaf.pid) - c0) / (n * times) * 1e6


class SpanSink:
    """An OTLP/HTTP receiver that accepts and drops what it is sent (an empty protobuf message is
    a valid ExportTraceServiceResponse), counting requests and bytes."""

    def __init__(self):
        import http.server
        sink = self
        self.requests, self.bytes = 0, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                self.rfile.read(length)
                sink.requests += 1
                sink.bytes += length
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def tracing_section(env):
    """Section 9: (rows, ratios) for tracing off, on, and a build from before tracing."""
    sink = SpanSink()
    body = batch_body(env)
    variants = []

    def start(name, binary, extra=""):
        port = free_port()
        cfg = os.path.join(env.dir, f"variant{len(variants)}.yaml")
        with open(cfg, "w") as f:
            f.write(f"""listen: "127.0.0.1:{port}"
{extra}upstreams:
  nginx: {{url: "http://127.0.0.1:{env.h2c}", protocol: h2c, connections: 2, timeout: 30s}}
routes:
  - {{name: users, method: POST, path: /users, upstream: nginx, concurrency: 1000, max_items: 100000, max_body_bytes: 16MiB,
      fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}}}
""")
        proc = env.spawn([binary, "serve", "--config", cfg, "--log-level", "warning"], port)
        post_batch(port, "/users", 1000)
        variants.append((name, port, proc))

    # SHEAF_BASE_BIN: "label=path;label=path", other builds to measure beside this one (the first
    # is the reference for "tracing off"); a bare path is labelled "before tracing existed".
    # Builds from before the access log know no access_log key: they get the plain config.
    bases = []
    for entry in filter(None, os.environ.get("SHEAF_BASE_BIN", "").split(";")):
        label, _, path = entry.rpartition("=")
        bases.append((label or "before tracing existed", path))
    for label, base in bases:
        start(label, base)
    start("tracing off", BIN, "access_log: off\n")
    start("tracing on (every span exported)", BIN,
          f"access_log: off\ntracing: {{otlp_endpoint: \"http://127.0.0.1:{sink.port}/v1/traces\"}}\n")
    results = {name: ([], []) for name, _, _ in variants}
    for _ in range(REPEAT):
        for name, port, proc in variants:
            c0 = cpu_seconds(proc.pid)
            rps, ok, _ = h2load(["-c4", "-m1", "-D", str(SUSTAIN_SECONDS), "-d", body, "-H", "content-type: application/json",
                                 f"http://127.0.0.1:{port}/users"])
            results[name][0].append(rps * 1000)
            results[name][1].append((cpu_seconds(proc.pid) - c0) / (ok * 1000) * 1e6)
    time.sleep(6)  # the exporter's batch delay: let the last spans go before counting
    sink.stop()
    rows = ["### 9. Tracing: CPU per item, off and on (interleaved, median of %d, min–max)\n" % REPEAT,
            "| build | items/s | Sheaf CPU per item |", "| --- | ---: | ---: |"]
    for name, (items, cpu) in results.items():
        rows.append(f"| {name} | {fmt(items, '', 0)} | {fmt(cpu, ' µs', 2)} |")
    rows.append("")
    rows.append(f"The span sink received {sink.requests} OTLP requests, {sink.bytes / 1e6:.1f} MB.")
    med = {name: statistics.median(cpu) for name, (_, cpu) in results.items()}
    ratios = {"tracing on / tracing off (CPU per item)": med["tracing on (every span exported)"] / med["tracing off"]}
    for label, _ in bases:
        ratios[f"tracing off (this build) / {label} (CPU per item)"] = med["tracing off"] / med[label]
    if len(bases) >= 2:
        ratios[f"{bases[1][0]} / {bases[0][0]} (CPU per item)"] = med[bases[1][0]] / med[bases[0][0]]
    if bases:
        spread = [max(cpu) / min(cpu) for _, cpu in results.values()]
        ratios["largest max/min spread of one build's runs (the noise)"] = max(spread)
    return rows, ratios


def tls_section(env):
    """Section 8: (rows, ratios) for TLS and HTTP/1.1 upstreams."""
    rows, ratios = [], {}
    # Each row's two sides interleaved round by round, so that drift hits both alike.
    body = batch_body(env)
    post_batch(env.sheaf_port, "/h2tls", 1000)  # connections up and TLS handshakes done first
    # h2 over TLS: Sheaf against h2load's own CPU per request over TLS to the same nginx.
    h2tls_items, h2tls_cpu, floor_cpu = [], [], []
    for _ in range(REPEAT):
        items, cpu = sustained_round(env, "/h2tls", body)
        h2tls_items.append(items)
        h2tls_cpu.append(cpu)
        _, ok, cpu = h2load(["-c1", "-m100", "-n", "100000", f"https://127.0.0.1:{env.tls}/users/1"])
        floor_cpu.append(cpu / ok * 1e6)
    # HTTP/1.1 through libcurl, cleartext and TLS, against nginx proxying over keep-alive HTTP/1.1.
    measured = {}
    for name, proxy_path in (("h1", "/plain/users/1"), ("h1tls", "/tls/users/1")):
        post_batch(env.sheaf_port, "/" + name, 1000)
        items, cpu, proxy_cpu = [], [], []
        for _ in range(REPEAT):
            round_items, round_cpu = sustained_round(env, "/" + name, body)
            items.append(round_items)
            cpu.append(round_cpu)
            c0 = tree_cpu(env.proxy.pid)
            _, ok, _ = h2load(["-c1", "-m100", "-n", "50000", f"http://127.0.0.1:{env.proxy_port}{proxy_path}"])
            proxy_cpu.append((tree_cpu(env.proxy.pid) - c0) / ok * 1e6)
        measured[name] = (items, cpu, proxy_cpu)
    rows.append("### 8. TLS and HTTP/1.1 upstreams: CPU per item against a per-request client or proxy\n")
    rows.append("| upstream | Sheaf items/s (sustained 1000-item batches) | Sheaf CPU per item | the other side | its CPU per request |")
    rows.append("| --- | ---: | ---: | --- | ---: |")
    rows.append(f"| h2 over TLS (nghttp2 + swift-nio-ssl), 2 connections | {fmt(h2tls_items, '', 0)} | {fmt(h2tls_cpu, ' µs', 2)} "
                f"| h2load -c1 -m100 over TLS straight at nginx (h2load's CPU) | {fmt(floor_cpu, ' µs', 2)} |")
    for name, label, proxy in (("h1", "HTTP/1.1 cleartext (libcurl), 64 connections", "nginx proxy_pass, keep-alive HTTP/1.1"),
                               ("h1tls", "HTTP/1.1 over TLS (libcurl + OpenSSL), 64 connections", "nginx proxy_pass https, keep-alive HTTP/1.1")):
        items, cpu, proxy_cpu = measured[name]
        rows.append(f"| {label} | {fmt(items, '', 0)} | {fmt(cpu, ' µs', 2)} | {proxy} (the proxy's CPU) | {fmt(proxy_cpu, ' µs', 2)} |")
    ratios["h2 over TLS: Sheaf CPU per item / h2load CPU per request over TLS"] = statistics.median(h2tls_cpu) / statistics.median(floor_cpu)
    ratios["HTTP/1.1 cleartext: Sheaf CPU per item / nginx proxy_pass CPU per request"] = \
        statistics.median(measured["h1"][1]) / statistics.median(measured["h1"][2])
    ratios["HTTP/1.1 over TLS: Sheaf CPU per item / nginx proxy_pass CPU per request"] = \
        statistics.median(measured["h1tls"][1]) / statistics.median(measured["h1tls"][2])
    # What a new connection costs: the same items on connections nginx ends every CHURN requests,
    # against connections that stay; the difference per connection, over TLS and cleartext.
    cost = {}
    for kind in ("h2tls", "h2c"):
        keep = [batch_cpu(env, f"/{kind}-keep") for _ in range(REPEAT)]
        churn = [batch_cpu(env, f"/{kind}-churn") for _ in range(REPEAT)]
        cost[kind] = [(c - k) * CHURN for c, k in zip(churn, keep)]
    handshake = [t - c for t, c in zip(cost["h2tls"], cost["h2c"])]
    rows.append("")
    rows.append(f"New connections (one connection, {CHURN} streams at a time, nginx ends each connection after {CHURN} requests, "
                f"3 × 5000-item batches; CPU per connection = (per-item CPU on ending connections − on lasting ones) × {CHURN}):\n")
    rows.append("| what | Sheaf CPU per new connection |")
    rows.append("| --- | ---: |")
    rows.append(f"| h2 over TLS (TCP + TLS 1.3 handshake with certificate verification + HTTP/2 set-up) | {fmt(cost['h2tls'], ' µs', 0)} |")
    rows.append(f"| h2c (TCP + HTTP/2 set-up) | {fmt(cost['h2c'], ' µs', 0)} |")
    rows.append(f"| the TLS handshake alone (difference) | {fmt(handshake, ' µs', 0)} |")
    ratios["TLS handshake, Sheaf CPU per new connection (µs)"] = statistics.median(handshake)
    return rows, ratios


def client_alone(port, path, n, connections):
    """The client making the N requests itself over HTTP/1.1 keep-alive."""
    ids = list(range(1, n + 1))
    chunks = [ids[i::connections] for i in range(connections)]

    def worker(chunk):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in chunk:
            c.request("GET", f"{path}/{i}")
            r = c.getresponse()
            r.read()
            assert r.status == 200
        c.close()

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def metric_sum(port, name, label):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def cancel_row(env, n=80_000, clients=4):
    """`clients` clients each post n/clients items at once (10,000 running per batch, most of
    them queued behind the upstream's stream limit, their items interleaved in the same
    connection queues), then all hang up. While Sheaf cancels, another client polls /healthz
    every 10 ms. Reports the health checks' worst latency, how long until every item had its
    outcome, and how the items ended (499 vs 504)."""
    port = env.sheaf_port
    before = {s: metric_sum(port, "sheaf_items_total", f'route="cancel",status="{s}"') for s in ("499", "504")}
    per = n // clients
    socks = []
    for c in range(clients):
        body = json.dumps(list(range(c * per + 1, (c + 1) * per + 1))).encode()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /cancel HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        socks.append(sock)
    for sock in socks:
        sock.recv(4096)  # the 207's head: the fan-out runs
    time.sleep(1.0)
    latencies = []
    stop_polling = threading.Event()

    def poll():
        while not stop_polling.is_set():
            t = time.perf_counter()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("GET", "/healthz")
            c.getresponse().read()
            c.close()
            latencies.append((time.perf_counter() - t) * 1000)
            time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)
    closed_at = time.perf_counter()
    for sock in socks:
        sock.close()
    settled_after = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metric_sum(port, "sheaf_items_in_flight", "") == 0:
            settled_after = time.perf_counter() - closed_at
            break
        time.sleep(0.02)
    time.sleep(0.3)
    stop_polling.set()
    poller.join()
    after = {s: metric_sum(port, "sheaf_items_total", f'route="cancel",status="{s}"') for s in ("499", "504")}
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return (f"| {n} ({clients} × {per}) | {lat[-1]:.1f} ms | {p99:.1f} ms | {statistics.median(lat):.1f} ms | {len(lat)} | "
            f"{(settled_after * 1000 if settled_after else float('nan')):.0f} ms | "
            f"{after['499'] - before['499']:.0f} | {after['504'] - before['504']:.0f} |")


def can_pin():
    """Whether this machine lets the benchmark place threads: CPUs 0 and 1 usable by this process
    (a container may allow others), and taskset and pgrep installed (`make bench-deps`)."""
    return {0, 1} <= os.sched_getaffinity(0) and bool(shutil.which("taskset")) and bool(shutil.which("pgrep"))


def pin(pid, cpus):
    """Pins a process, every thread of it and its children's (nginx's and nghttpx's workers), to `cpus`."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for each in [str(pid)] + children:
        # Not checked: a worker that exited in between needs no pinning.
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, each], capture_output=True)


def placement_section(env):
    """CPU per item or request with the threads placed, not left to the scheduler: whether two
    programs that talk share a core decides how much each spends per request, by up to 3x for
    h2load (each side woken from idle for a few frames, or running on with what the other wrote).
    Two placements: "apart" (the program measured alone on CPU 1, nginx and the load generator
    on CPU 0) and "one core" (everything on CPU 0). Rounds interleaved; every process unpinned after."""
    if not can_pin():
        return ["(needs CPUs 0 and 1, taskset and pgrep: `make bench-deps`)"], {}
    body = batch_body(env)
    post_batch(env.sheaf_port, "/h2tls", 1000)
    placements = (("apart", "1", "0"), ("one core", "0", "0"))
    keys = [(p, what) for p, _, _ in placements for what in ("sheaf", "h2load", "nghttpx", "sheaf tls", "h2load tls")]
    cpu = {key: [] for key in keys}
    everything = [env.nginx.pid, env.sheaf.pid, env.nghttpx.pid]

    def placed(args, cpus, what):
        """h2load pinned to `cpus`: (requests that succeeded, its CPU seconds); none succeeding is an error, not a division by zero."""
        _, ok, used = h2load(args, cpus=cpus)
        if not ok:
            raise RuntimeError(f"placement: no request succeeded ({what})")
        return ok, used
    try:
        for _ in range(REPEAT):
            for name, measured, others in placements:
                pin(env.nginx.pid, others)
                pin(env.nghttpx.pid, others)
                pin(env.sheaf.pid, measured)
                for route, key in (("/users", "sheaf"), ("/h2tls", "sheaf tls")):
                    post_batch(env.sheaf_port, route, 1000)
                    c0 = cpu_seconds(env.sheaf.pid)
                    ok, _ = placed(["-c4", "-m1", "-D", str(SUSTAIN_SECONDS), "-d", body, "-H", "content-type: application/json",
                                    f"http://127.0.0.1:{env.sheaf_port}{route}"], others, key)
                    cpu[(name, key)].append((cpu_seconds(env.sheaf.pid) - c0) / (ok * 1000) * 1e6)
                pin(env.sheaf.pid, others)
                for url, key in ((f"http://127.0.0.1:{env.h2c}/users/1", "h2load"), (f"https://127.0.0.1:{env.tls}/users/1", "h2load tls")):
                    ok, used = placed(["-c1", "-m100", "-n", "100000", url], measured, key)
                    cpu[(name, key)].append(used / ok * 1e6)
                pin(env.nghttpx.pid, measured)
                c0 = tree_cpu(env.nghttpx.pid)
                ok, _ = placed(["-c1", "-m100", "-n", "50000", f"http://127.0.0.1:{env.nghttpx_port}/users/1"], others, "nghttpx")
                cpu[(name, "nghttpx")].append((tree_cpu(env.nghttpx.pid) - c0) / ok * 1e6)
    finally:
        all_cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        for pid in everything:
            pin(pid, all_cpus)
    rows = ["### Placed threads: CPU per item or request when the scheduler does not decide who shares a core\n",
            "\"apart\": the program measured alone on CPU 1, nginx and the load generator on CPU 0; \"one core\": everything on CPU 0.\n",
            "| placement | Sheaf h2c, per item | h2load h2c, per request | nghttpx, per proxied request | Sheaf h2 over TLS, per item | h2load over TLS, per request |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    ratios = {}
    for name, _, _ in placements:
        rows.append(f"| {name} | " + " | ".join(fmt(cpu[(name, what)], " µs", 2) for what in ("sheaf", "h2load", "nghttpx", "sheaf tls", "h2load tls")) + " |")
        median = {what: statistics.median(cpu[(name, what)]) for what in ("sheaf", "h2load", "nghttpx", "sheaf tls", "h2load tls")}
        ratios[f"{name}: Sheaf / h2load (h2c)"] = median["sheaf"] / median["h2load"]
        ratios[f"{name}: Sheaf / nghttpx"] = median["sheaf"] / median["nghttpx"]
        ratios[f"{name}: Sheaf / h2load (h2 over TLS)"] = median["sheaf tls"] / median["h2load tls"]
    return rows, ratios


CANCEL_HEAD = ("| items | worst /healthz | p99 /healthz | median /healthz | checks | every item settled after the hang-up | 499 | 504 |\n"
               "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "tls":
        env = Env()
        try:
            rows, ratios = tls_section(env)
            print("\n".join(f"| {k} | {v:.2f} |" for k, v in ratios.items()))
            print("\n".join(rows))
        finally:
            env.close()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "placement":
        env = Env()
        try:
            rows, ratios = placement_section(env)
            print("\n".join(rows))
            print("\n".join(f"| {k} | {v:.2f} |" for k, v in ratios.items()))
        finally:
            env.close()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "tracing":
        env = Env()
        try:
            rows, ratios = tracing_section(env)
            print("\n".join(rows))
            print("\n".join(f"| {k} | {v:.3f} |" for k, v in ratios.items()))
        finally:
            env.close()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "stream":
        env = Env()
        try:
            post_batch(env.sheaf_port, "/users", 1000)
            print(json.dumps(streamed_batch(env, 1_000_000), indent=1))
        finally:
            env.close()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "cancel":
        env = Env()
        try:
            post_batch(env.sheaf_port, "/users", 1000)
            print(CANCEL_HEAD)
            for n, clients in ((10_000, 1), (80_000, 1), (80_000, 4)):
                print(cancel_row(env, n, clients))
        finally:
            env.close()
        return
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} missing: run `swift build -c release` (make bench does)")
    env = Env()
    rows = []
    ratios = {}
    try:
        sheaf = env.sheaf.pid
        time.sleep(0.5)
        idle_rss = rss_kib(sheaf, "VmRSS")
        # Warm up connections.
        post_batch(env.sheaf_port, "/users", 1000)

        # 1. Batch wall time and CPU per item.
        rows.append("### 1. Sheaf, h2c upstream: one batch, wall time (median of %d, min–max)\n" % REPEAT)
        rows.append("| items | JSON 207 | XML 207 | Sheaf CPU per item (JSON) |")
        rows.append("| ---: | ---: | ---: | ---: |")
        for n in (1, 100, 1000, 10000):
            walls = {"json": [], "xml": []}
            cpu_per = []
            for _ in range(REPEAT):
                for fmt_name, accept in (("json", "application/json"), ("xml", "application/xml")):
                    c0 = cpu_seconds(sheaf)
                    wall, _ = post_batch(env.sheaf_port, "/users", n, accept)
                    c1 = cpu_seconds(sheaf)
                    walls[fmt_name].append(wall * 1000)
                    if fmt_name == "json" and n >= 1000:
                        cpu_per.append((c1 - c0) / n * 1e6)
            cpu_text = fmt(cpu_per, " µs") if cpu_per else "(too short to measure)"
            rows.append(f"| {n} | {fmt(walls['json'], ' ms')} | {fmt(walls['xml'], ' ms')} | {cpu_text} |")

        # 1–3 interleaved round by round (Sheaf, then h2load at nginx, then nghttpx), so that the
        # VM's drift over minutes hits all three alike instead of whichever ran last.
        body = batch_body(env)
        sustained, sheaf_cpu_item, floor_rps, floor_cpu, px_rps, px_cpu = [], [], [], [], [], []
        for _ in range(REPEAT):
            items, cpu = sustained_round(env, "/users", body)
            sustained.append(items)
            sheaf_cpu_item.append(cpu)
            # 2. The floor: h2load straight at nginx.
            rps, ok, cpu = h2load(["-c1", "-m100", "-n", "100000", f"http://127.0.0.1:{env.h2c}/users/1"])
            floor_rps.append(rps)
            floor_cpu.append(cpu / ok * 1e6)
            # 3. nghttpx as the per-request proxy, h2load through it.
            c0 = tree_cpu(env.nghttpx.pid)
            rps, ok, _ = h2load(["-c1", "-m100", "-n", "50000", f"http://127.0.0.1:{env.nghttpx_port}/users/1"])
            px_cpu.append((tree_cpu(env.nghttpx.pid) - c0) / ok * 1e6)
            px_rps.append(rps)
        rows.append("")
        rows.append(f"Sustained: 4 clients posting 1000-item batches back to back for {SUSTAIN_SECONDS} s (h2load over h2c): "
                    f"**{fmt(sustained, ' items/s', 0)}**, Sheaf CPU **{fmt(sheaf_cpu_item, ' µs/item', 2)}**.")

        rows.append("")
        rows.append("### 2–3. Per-request floor and a per-request proxy\n")
        rows.append("| what | requests/s | CPU per request |")
        rows.append("| --- | ---: | ---: |")
        rows.append(f"| h2load -c1 -m100 straight at nginx (h2load's own CPU) | {fmt(floor_rps, '', 0)} | {fmt(floor_cpu, ' µs', 2)} |")
        rows.append(f"| nghttpx (h2c front, h2 back, 1 worker), h2load through it (nghttpx's CPU) | {fmt(px_rps, '', 0)} | {fmt(px_cpu, ' µs', 2)} |")
        rows.append(f"| Sheaf, sustained 1000-item batches (Sheaf's CPU) | {fmt(sustained, ' items/s', 0)} | {fmt(sheaf_cpu_item, ' µs', 2)} |")
        ratios["Sheaf CPU per item / h2load CPU per request"] = statistics.median(sheaf_cpu_item) / statistics.median(floor_cpu)
        ratios["Sheaf CPU per item / nghttpx CPU per proxied request"] = statistics.median(sheaf_cpu_item) / statistics.median(px_cpu)
        ratios["Sheaf items/s / h2load requests/s at nginx"] = statistics.median(sustained) / statistics.median(floor_rps)
        ratios["Sheaf CPU per item, slowest round / fastest round"] = max(sheaf_cpu_item) / min(sheaf_cpu_item)
        formats = sustained_formats(env)
        rows.append(f"| Sheaf, sustained 1000-item batches, JSON and XML 207s interleaved (Sheaf's CPU) | | "
                    f"JSON {fmt(formats['json'], ' µs', 2)}, XML {fmt(formats['xml'], ' µs', 2)} |")
        ratios["XML 207 / JSON 207, Sheaf CPU per item"] = statistics.median(formats["xml"]) / statistics.median(formats["json"])

        # 4–5. Latency with a 20 ms upstream, against the client alone.
        rows.append("")
        rows.append("### 4–5. With a 20 ms upstream (nginx echo_sleep 0.02): batch latency vs the client alone\n")
        rows.append("| items | Sheaf batch (1 request) | h2load straight at nginx (-c1 -mN) | client alone, sequential (keep-alive) | client alone, HTTP/1.1 × 6 connections |")
        rows.append("| ---: | ---: | ---: | ---: | ---: |")
        post_batch(env.sheaf_port, "/slow", 10)
        for n in (1, 100, 1000):
            sheaf_ms = [post_batch(env.sheaf_port, "/slow", n)[0] * 1000 for _ in range(REPEAT)]
            direct = [h2load_wall(["-c1", f"-m{n}", f"-n{n}", f"http://127.0.0.1:{env.h2c}/slow/1"]) for _ in range(REPEAT)]
            seq = [client_alone(env.h1, "/slow", n, 1) * 1000 for _ in range(1 if n >= 100 else REPEAT)] if n <= 100 else None
            six = [client_alone(env.h1, "/slow", n, 6) * 1000 for _ in range(1 if n >= 1000 else REPEAT)]
            seq_text = fmt(seq, " ms", 0) if seq else f"≈ {n * 20} ms (n × 20 ms; not run)"
            rows.append(f"| {n} | {fmt(sheaf_ms, ' ms')} | {fmt(direct, ' ms')} | {seq_text} | {fmt(six, ' ms', 0)} |")
            if n == 1000:
                ratios["1000-item batch latency / h2load's own 1000 concurrent requests"] = statistics.median(sheaf_ms) / statistics.median(direct)
                ratios["1000-item batch latency / 20 ms floor"] = statistics.median(sheaf_ms) / 20.0
                ratios["client alone (6 × HTTP/1.1) / Sheaf, 1000 items"] = statistics.median(six) / statistics.median(sheaf_ms)

        # 6. Memory: a 100,000-item batch.
        before = rss_kib(sheaf, "VmRSS")
        wall, data = post_batch(env.sheaf_port, "/users", 100_000)
        peak = rss_kib(sheaf, "VmHWM")
        rows.append("")
        rows.append("### 6. Memory\n")
        rows.append(f"Idle RSS after start: {idle_rss / 1024:.1f} MiB. Before the big batch: {before / 1024:.1f} MiB. "
                    f"Peak RSS (VmHWM) after one 100,000-item batch ({wall:.2f} s, {len(data) / 1e6:.1f} MB of 207): "
                    f"**{peak / 1024:.1f} MiB**, {(peak - idle_rss) / 1024:.1f} MiB above idle.")
        ratios["peak RSS above idle, 100k items (MiB)"] = (peak - idle_rss) / 1024
        million = streamed_batch(env, 1_000_000)
        rows.append("")
        rows.append(f"A 1,000,000-item batch streamed in ({million['body_mb']:.1f} MB of JSON in 64 KiB writes, NDJSON 207 of "
                    f"{million['out_mb']:.0f} MB read meanwhile, {million['wall_s']:.1f} s, {million['succeeded']} items 200, each "
                    f"reported once): first result after **{million['first_ms']:.0f} ms**, last request byte sent after "
                    f"{million['upload_ms']:.0f} ms; peak RSS **{million['peak_mib']:.1f} MiB** above its RSS before the batch.")
        ratios["peak RSS above idle, 1M items streamed (MiB)"] = million["peak_mib"]
        ratios["first result / last request byte sent, 1M items (ms/ms)"] = million["first_ms"] / million["upload_ms"]

        # 7. A client hangs up on a huge queued batch: health checks keep answering.
        rows.append("")
        rows.append("### 7. Cancelling a queued batch: a client hangs up on N items queued behind nginx's stream limit\n")
        rows.append(CANCEL_HEAD)
        rows.append(cancel_row(env, 80_000, 1))
        rows.append(cancel_row(env, 80_000, 4))

        rows.append("")
        tls_rows, tls_ratios = tls_section(env)
        rows.extend(tls_rows)
        ratios.update(tls_ratios)

        # The h2c and TLS ratios again with the threads placed (the ones above are wherever the
        # scheduler put them, which moves h2load's own cost by up to 3x between runs).
        rows.append("")
        placed_rows, placed_ratios = placement_section(env)
        rows.extend(placed_rows)
        ratios.update(placed_ratios)
    finally:
        env.close()

    head = [
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} cores, "
        f"{cpu_model()}, {platform.system()} {platform.release()}; command: `make bench` "
        f"(BENCH_REPEAT={REPEAT}, BENCH_SECONDS={SUSTAIN_SECONDS}).",
        "",
        "### Ratios (targets from issue 13; issues 3 and 8 in brackets)\n",
        "| ratio | value | target |",
        "| --- | ---: | --- |",
    ]
    targets = {
        "Sheaf CPU per item / h2load CPU per request": "≤ 0.6 (≤ 1.3)",
        "Sheaf CPU per item / nghttpx CPU per proxied request": "≤ 0.6 (≤ 1.3)",
        "Sheaf items/s / h2load requests/s at nginx": "≥ 1.0 (≥ 0.8)",
        "Sheaf CPU per item, slowest round / fastest round": "≤ 1.15",
        "XML 207 / JSON 207, Sheaf CPU per item": "≤ 1.2",
        "1000-item batch latency / 20 ms floor": "(≤ 1.5)",
        "1000-item batch latency / h2load's own 1000 concurrent requests": "≤ 0.9",
        "client alone (6 × HTTP/1.1) / Sheaf, 1000 items": "≥ 50",
        "peak RSS above idle, 100k items (MiB)": "≤ 64",
        "peak RSS above idle, 1M items streamed (MiB)": "≤ 64",
        "first result / last request byte sent, 1M items (ms/ms)": "< 1",
        "h2 over TLS: Sheaf CPU per item / h2load CPU per request over TLS": "≤ 0.6 (≤ 1.3)",
        "HTTP/1.1 cleartext: Sheaf CPU per item / nginx proxy_pass CPU per request": "≤ 1.0 (≤ 1.3)",
        "HTTP/1.1 over TLS: Sheaf CPU per item / nginx proxy_pass CPU per request": "≤ 1.0 (≤ 1.3)",
        "TLS handshake, Sheaf CPU per new connection (µs)": "(sizing)",
        "apart: Sheaf / h2load (h2c)": "≤ 0.6",
        "apart: Sheaf / nghttpx": "≤ 0.6",
        "apart: Sheaf / h2load (h2 over TLS)": "≤ 0.6",
        "one core: Sheaf / h2load (h2c)": "≤ 0.6",
        "one core: Sheaf / nghttpx": "≤ 0.6",
        "one core: Sheaf / h2load (h2 over TLS)": "≤ 0.6",
    }
    for k, v in ratios.items():
        head.append(f"| {k} | {v:.2f} | {targets[k]} |")
    report = "\n".join(head + [""] + rows) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "latest.md"), "w") as f:
        f.write(report)
    print(report)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
