#!/usr/bin/env python3
"""Sheaf's distance benchmark (`make bench-distance`): where making the calls yourself wins, and
where one bulk request to Sheaf next to the upstream does.

The critique Sheaf answers is "why not make these requests yourself? If that is too expensive,
HTTP/2 makes it cheaper". On loopback a client with one HTTP/2 connection is as fast as Sheaf;
the difference is distance. So a delay proxy (bench/delayproxy.py) puts a round-trip time
(RTT 0, 10, 50, 100 ms; RTT/2 each way, per chunk) between the client and whatever it talks to,
and for N = 1, 10, 100, 1000, 10000 items we time, from the first byte sent to the last item known:
  1. the client alone over HTTP/1.1, 6 keep-alive connections, one request at a time on each (a
     browser's budget per host): h2load --h1 -c 6 -n N, through the delay, to nginx;
  2. the client alone over one HTTP/2 connection, 128 streams at once (nginx's default limit):
     h2load -c 1 -m 128 -n N, through the delay, to nginx;
  3. one bulk request (a JSON array of N ids) through the delay to Sheaf, which sits next to
     nginx (no delay) and fans it out over one h2c connection, so it has the same 128 streams as
     approach 2: the 207 as JSON, XML and NDJSON (NDJSON's time is the summary line's; its first
     line's time is reported too). Each 207 is parsed: one that does not hold exactly N items,
     all 200, is an error, not a data point.
nginx (one worker, its echo module) answers every item after a 5 ms think time (echo_sleep);
keepalive_requests is raised so that neither protocol's connections end mid-run.

h2load is the client for 1 and 2 (nghttp2's own load generator, C, so the client's CPU is not
what is measured; "finished in" is its wall time, and its TCP connect to the proxy is on
loopback). Approach 3's client is this script on a raw socket: it starts the clock, sends the
request in one write, and stops the clock when the 207's last item (or NDJSON's summary line)
has arrived; parsing comes after the clock.

Each cell is run DISTANCE_REPEAT times (default 3), runs of the approaches interleaved, and
reported as median (min–max). A cell whose estimate (round trips × (RTT + 5 ms)) exceeds
DISTANCE_CAP seconds (default 30) is not run and is reported as "> cap" with the estimate. Bytes
on the wire both ways come from the proxy (TCP payload). Before the sweep, each approach is timed
straight and through the proxy at RTT 0, with the proxy's CPU, to show whether the proxy is the
bottleneck.

Writes bench/results/distance.md (and distance.json, the raw runs) and prints it; draws
docs/distance-time.png and docs/distance-speedup.png with matplotlib when it is importable
(`make bench-distance` runs this in bench/.venv, which has it). `python3 bench/distance.py plot`
redraws the plots from bench/results/distance.json.
"""
import http.client
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

# The process helpers the side-by-side benchmark already has (as bench/profile.py uses them).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import cpu_model, cpu_seconds, free_port, stop, tool, wait_port  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("SHEAF_BIN", os.path.join(ROOT, ".build", "release", "sheaf"))
REPEAT = int(os.environ.get("DISTANCE_REPEAT", "3"))
CAP = float(os.environ.get("DISTANCE_CAP", "30"))
RTTS = [int(x) for x in os.environ.get("DISTANCE_RTTS", "0,10,50,100").split(",")]
NS = [int(x) for x in os.environ.get("DISTANCE_NS", "1,10,100,1000,10000").split(",")]
RESULTS = os.path.join(ROOT, "bench", "results")
DOCS = os.path.join(ROOT, "docs")
THINK = 0.005       # nginx's echo_sleep before each answer
H1_CONNECTIONS = 6  # a browser's connections per host
H2_STREAMS = 128    # nginx's default http2_max_concurrent_streams

APPROACHES = {
    "h1": "client alone, HTTP/1.1 × 6 connections",
    "h2": "client alone, HTTP/2 (1 connection, 128 streams)",
    "json": "Sheaf, JSON 207",
    "xml": "Sheaf, XML 207",
    "ndjson": "Sheaf, NDJSON 207",
}
ACCEPT = {"json": "application/json", "xml": "application/xml", "ndjson": "application/x-ndjson"}

NGINX = """
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
    default_type application/json;
    # nginx ends a connection (HTTP/1.1 or HTTP/2) after 1000 requests by default: not mid-run here.
    keepalive_requests 1000000;
    # h2c by prior knowledge: Debian 12's nginx 1.22 has `listen ... http2`, not `http2 on`.
    server {{
        listen 127.0.0.1:{h2c} http2;
        location ~ ^/item/(\\d+)$ {{ echo_sleep {think}; echo '{{"id":$1,"name":"item $1","active":true}}'; }}
    }}
    server {{
        listen 127.0.0.1:{h1};
        location ~ ^/item/(\\d+)$ {{ echo_sleep {think}; echo '{{"id":$1,"name":"item $1","active":true}}'; }}
    }}
}}
"""

# Sheaf next to nginx: one h2c connection (the same 128 streams the HTTP/2 client gets), a template
# route whose body is the array of ids.
SHEAF = """listen: "127.0.0.1:{port}"
access_log: off
upstreams:
  nginx:
    url: http://127.0.0.1:{h2c}
    protocol: h2c
    connections: 1
    timeout: 60s
routes:
  - name: items
    method: POST
    path: /items
    upstream: nginx
    fan_out: {{items: "", method: GET, path: "/item/{{item}}"}}
    concurrency: 1000
    max_items: 10000
"""


class RunError(Exception):
    pass


class Env:
    """nginx, Sheaf and the delay proxy, each on free ports, stopped by pid in close()."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sheaf-distance-")
        self.procs = []
        self.h2c, self.h1, self.sheaf = free_port(), free_port(), free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX.format(d=self.dir, h2c=self.h2c, h1=self.h1, think=THINK))
        self.spawn([tool("nginx"), "-p", self.dir, "-c", conf], self.h2c)
        cfg = os.path.join(self.dir, "sheaf.yaml")
        with open(cfg, "w") as f:
            f.write(SHEAF.format(port=self.sheaf, h2c=self.h2c))
        check = subprocess.run([BIN, "check", "--config", cfg], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError("sheaf check refused the config:\n" + check.stdout + check.stderr)
        self.sheaf_proc = self.spawn([BIN, "serve", "--config", cfg, "--log-level", "warning"], self.sheaf)
        # One proxy process, one listening port per target; the RTT is set through its control port.
        self.via = {"h1": free_port(), "h2": free_port(), "sheaf": free_port()}
        self.control_port = free_port()
        target = {"h1": self.h1, "h2": self.h2c, "sheaf": self.sheaf}
        maps = [f"--map={name}:{port}=127.0.0.1:{target[name]}" for name, port in self.via.items()]
        self.proxy = self.spawn([sys.executable, os.path.join(ROOT, "bench", "delayproxy.py"), *maps,
                                 f"--control={self.control_port}"], self.control_port, "delayproxy")
        self.control = socket.create_connection(("127.0.0.1", self.control_port), timeout=10)
        self.control_file = self.control.makefile("rwb")

    def spawn(self, args, port, name=None):
        err = open(os.path.join(self.dir, (name or os.path.basename(args[0])) + ".err"), "w")
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        self.procs.append(p)
        wait_port(port, p)
        return p

    def ask(self, command):
        self.control_file.write(command.encode() + b"\n")
        self.control_file.flush()
        answer = self.control_file.readline().decode().strip()
        if answer.startswith("error"):
            raise RuntimeError(f"delay proxy: {command}: {answer}")
        return answer

    def close(self):
        try:
            self.control.close()
        except OSError:
            pass
        for p in reversed(self.procs):
            stop(p)
        shutil.rmtree(self.dir, ignore_errors=True)


def rounds(approach, n):
    """Round trips a client pays for n items: the requests in flight at once bound them."""
    if approach == "h1":
        return math.ceil(n / H1_CONNECTIONS)
    if approach == "h2":
        return math.ceil(n / H2_STREAMS)
    return 1


def estimate(approach, n, rtt_ms):
    """Seconds a run should take: each round trip costs the RTT and nginx's think time; behind
    Sheaf, the think time is paid once per 128 items, next to nginx."""
    if approach in ("h1", "h2"):
        return rounds(approach, n) * (rtt_ms / 1000 + THINK)
    return rtt_ms / 1000 + math.ceil(n / H2_STREAMS) * THINK


def run_h2load(args, n, timeout):
    out = subprocess.run(["h2load", *args], capture_output=True, text=True, timeout=timeout)
    m = re.search(r"finished in ([\d.]+)(us|ms|s),", out.stdout)
    done = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
    codes = re.search(r"status codes: (\d+) 2xx", out.stdout)
    if not m or not done or not codes:
        raise RunError(f"h2load said: {(out.stdout + out.stderr).strip()[-300:]}")
    if int(done.group(2)) != n or int(codes.group(1)) != n:
        raise RunError(f"h2load: {done.group(2)} of {n} succeeded, {codes.group(1)} answered 2xx")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


def client_alone(approach, port, n, timeout):
    url = f"http://127.0.0.1:{port}/item/1"
    if approach == "h1":
        return run_h2load(["--h1", "-c", str(min(H1_CONNECTIONS, n)), "-n", str(n), url], n, timeout), None
    return run_h2load(["-c", "1", "-m", str(H2_STREAMS), "-n", str(n), url], n, timeout), None


def bulk_request(fmt, port, n, timeout):
    """One bulk request to Sheaf on a fresh connection: (seconds to the last item, seconds to the
    first NDJSON line or None). The 207 is verified after the clock stops."""
    body = json.dumps(list(range(1, n + 1)), separators=(",", ":")).encode()
    head = (f"POST /items HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: {ACCEPT[fmt]}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first = None
    try:
        start = time.perf_counter()
        sock.sendall(head + body)
        r = http.client.HTTPResponse(sock, method="POST")
        r.begin()
        if r.status != 207:
            raise RunError(f"Sheaf answered {r.status}: {r.read()[:200]!r}")
        if fmt == "ndjson":
            # Read as it comes; the last item is known when the summary line is complete.
            buf, summary_at = bytearray(), -1
            while True:
                chunk = r.read1(65536)
                if not chunk:
                    break
                if first is None and b"\n" in chunk:
                    first = time.perf_counter() - start
                scan = max(0, len(buf) - 16)
                buf += chunk
                if summary_at < 0:
                    summary_at = buf.find(b'\n{"summary"', scan)
                if summary_at >= 0 and buf.find(b"\n", summary_at + 1) >= 0:
                    break
            elapsed = time.perf_counter() - start
            data = bytes(buf) + r.read()
        else:
            data = r.read()
            elapsed = time.perf_counter() - start
    finally:
        sock.close()
    verify(fmt, data, n)
    return elapsed, first


def verify(fmt, data, n):
    """The 207 accounts for exactly the n items, each once, each 200."""
    want = {str(i) for i in range(n)}
    if fmt == "xml":
        root = ET.fromstring(data)
        responses = root.findall("{DAV:}response")
        ids = [r.findtext("{urn:sheaf}id") for r in responses]
        statuses = [r.findtext("{DAV:}status") for r in responses]
        summary = root.find("{urn:sheaf}summary")
        total = int(summary.get("total")) if summary is not None else -1
        succeeded = int(summary.get("succeeded")) if summary is not None else -1
        bad = [s for s in statuses if s != "HTTP/1.1 200 OK"]
    else:
        if fmt == "json":
            doc = json.loads(data)
            items, summary = doc["results"], doc["summary"]
        else:
            lines = [json.loads(line) for line in data.splitlines() if line.strip()]
            items, summary = lines[:-1], lines[-1].get("summary", {})
        ids = [item["id"] for item in items]
        bad = [item["status"] for item in items if item["status"] != 200]
        total, succeeded = summary.get("total", -1), summary.get("succeeded", -1)
    if len(ids) != n or set(ids) != want or total != n or succeeded != n or bad:
        raise RunError(f"{fmt} 207: {len(ids)} items ({len(set(ids) & want)} of the {n} ids), "
                       f"summary total {total} succeeded {succeeded}, {len(bad)} not 200 {bad[:3]}")


def measure(env, approach, n, rtt, via_proxy=True):
    """One run: its wall time, first-line time, and what the proxy saw."""
    timeout = CAP * 2 + 30
    if via_proxy:
        env.ask("reset")
        cpu0 = cpu_seconds(env.proxy.pid)
    if approach in ("h1", "h2"):
        port = env.via[approach] if via_proxy else (env.h1 if approach == "h1" else env.h2c)
        wall, first = client_alone(approach, port, n, timeout)
    else:
        port = env.via["sheaf"] if via_proxy else env.sheaf
        wall, first = bulk_request(approach, port, n, timeout)
    run = {"wall": wall, "first": first}
    if via_proxy:
        proxy_cpu = cpu_seconds(env.proxy.pid) - cpu0
        stats = json.loads(env.ask("stats"))
        counters = stats["maps"]["sheaf" if approach in ACCEPT else approach]
        run.update(up=counters["up"], down=counters["down"], connections=counters["connections"],
                   late_mean_ms=stats["late_mean_ms"], late_max_ms=stats["late_max_ms"],
                   late_min_ms=stats["late_min_ms"], proxy_cpu=proxy_cpu)
    return run


def proxy_check(env, log):
    """Each approach straight and through the proxy at RTT 0, interleaved: is the proxy the bottleneck?"""
    env.ask("rtt 0")
    cases = [("h1", 1000), ("h2", 10000), ("json", 10000), ("ndjson", 10000)]
    out = []
    for approach, n in cases:
        straight, proxied = [], []
        for _ in range(REPEAT):
            straight.append(measure(env, approach, n, 0, via_proxy=False))
            proxied.append(measure(env, approach, n, 0))
        out.append({"approach": approach, "n": n, "straight": straight, "proxied": proxied})
        log(f"proxy check {approach} N={n}: straight {med_ms([r['wall'] for r in straight])}, "
            f"through the proxy {med_ms([r['wall'] for r in proxied])}")
    return out


def med_ms(values):
    return f"{statistics.median(values) * 1000:.1f} ms"


def sweep(env, log):
    cells = {}
    for rtt in RTTS:
        env.ask(f"rtt {rtt}")
        for n in NS:
            for approach in APPROACHES:
                est = estimate(approach, n, rtt)
                cells[(approach, rtt, n)] = {"approach": approach, "rtt": rtt, "n": n, "estimate": est,
                                             "skipped": est > CAP, "runs": [], "errors": []}
            for _ in range(REPEAT):
                for approach in APPROACHES:  # interleaved: drift hits every approach alike
                    cell = cells[(approach, rtt, n)]
                    if cell["skipped"]:
                        continue
                    try:
                        cell["runs"].append(measure(env, approach, n, rtt))
                    except (RunError, subprocess.TimeoutExpired, OSError, ValueError, KeyError, ET.ParseError) as e:
                        cell["errors"].append(f"{type(e).__name__}: {e}")
            line = []
            for approach in APPROACHES:
                cell = cells[(approach, rtt, n)]
                if cell["skipped"]:
                    line.append(f"{approach} > cap (≈ {cell['estimate']:.0f} s)")
                elif cell["runs"]:
                    line.append(f"{approach} {med_ms([r['wall'] for r in cell['runs']])}")
                if cell["errors"]:
                    line.append(f"{approach} {len(cell['errors'])} error(s): {cell['errors'][0]}")
            log(f"RTT {rtt} ms, N={n}: " + "; ".join(line))
    return list(cells.values())


# ---- report ----------------------------------------------------------------------------------

def stat(values):
    return statistics.median(values), min(values), max(values)


def ms_text(values):
    m, lo, hi = stat([v * 1000 for v in values])
    digits = 0 if m >= 100 else 1
    return f"{m:.{digits}f} ms ({lo:.{digits}f}–{hi:.{digits}f})"


def size_text(b):
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.{1 if b < 100 * scale else 0}f} {unit}"
    return f"{b:.0f} B"


def index(cells):
    return {(c["approach"], c["rtt"], c["n"]): c for c in cells}


def cell_text(c):
    if c is None:
        return "—"
    if c["skipped"]:
        return f"> cap (≈ {c['estimate']:.0f} s)"
    if c["errors"]:
        return f"**error** ({len(c['errors'])} of {REPEAT} runs)" + (f"; {ms_text([r['wall'] for r in c['runs']])}" if c["runs"] else "")
    return ms_text([r["wall"] for r in c["runs"]])


def typical(c):
    """A cell's median wall time, or its estimate when it was not run (None when it failed)."""
    if c is None or c["errors"] or (not c["runs"] and not c["skipped"]):
        return None
    return c["estimate"] if c["skipped"] else statistics.median(r["wall"] for r in c["runs"])


def speedups(cells, other):
    """{(rtt, n): (speed-up of Sheaf JSON over `other`, from an estimate?)}"""
    ix = index(cells)
    out = {}
    for rtt in RTTS:
        for n in NS:
            s, o = typical(ix.get(("json", rtt, n))), typical(ix.get((other, rtt, n)))
            if s and o:
                out[(rtt, n)] = (o / s, ix[(other, rtt, n)]["skipped"])
    return out


WIN = 1.1  # a speed-up below this is a tie: the proxy's timers alone move runs by a few ms


def clear_win(cells, other, rtt, n):
    """Sheaf's slowest run beats the other's fastest (or the other was over the cap): a win that
    is not the noise."""
    ix = index(cells)
    s, o = ix.get(("json", rtt, n)), ix.get((other, rtt, n))
    if not s or not o or not s["runs"] or s["errors"] or o["errors"]:
        return False
    return bool(o["skipped"] or (o["runs"] and max(r["wall"] for r in s["runs"]) < min(r["wall"] for r in o["runs"])))


def crossover_n(cells, other, rtt):
    """The smallest N of the grid from which Sheaf (JSON) clearly beats `other` at every larger N."""
    found = None
    for n in reversed(NS):
        if clear_win(cells, other, rtt, n) and speedups(cells, other)[(rtt, n)][0] >= WIN:
            found = n
        else:
            break
    return found


def crossover_rtt(cells, other, n):
    """The smallest RTT of the grid from which Sheaf (JSON) clearly beats `other` at every larger RTT."""
    found = None
    for rtt in reversed(RTTS):
        if clear_win(cells, other, rtt, n) and speedups(cells, other)[(rtt, n)][0] >= WIN:
            found = rtt
        else:
            break
    return found


def report(data):
    meta, cells, check = data["meta"], data["cells"], data["proxy_check"]
    ix = index(cells)
    out = [f"Run: {meta['date']}; machine: {meta['machine']}; load average {meta['load_start']} at the start, "
           f"{meta['load_end']} at the end; Sheaf: {meta['sheaf']}; sweep {meta['sweep_seconds']:.0f} s "
           f"(with the proxy check {meta['total_seconds']:.0f} s); command: `{meta['command']}` "
           f"(DISTANCE_REPEAT={meta['repeat']}, DISTANCE_CAP={meta['cap']:.0f} s).",
           "",
           "Wall time from the first byte sent to the last item known (NDJSON: its summary line), median "
           f"of {meta['repeat']} runs (min–max). nginx thinks {THINK * 1000:.0f} ms per item; the client is "
           "RTT away from everything it talks to; Sheaf sits next to nginx (one h2c connection, 128 streams).",
           ""]
    for rtt in RTTS:
        out.append(f"### RTT {rtt} ms\n")
        out.append("| items | " + " | ".join(APPROACHES.values()) + " | NDJSON, first item |")
        out.append("| ---: |" + " ---: |" * (len(APPROACHES) + 1))
        for n in NS:
            row = [cell_text(ix.get((a, rtt, n))) for a in APPROACHES]
            nd = ix.get(("ndjson", rtt, n))
            firsts = [r["first"] for r in nd["runs"] if r["first"] is not None] if nd else []
            row.append(ms_text(firsts) if firsts else "—")
            out.append(f"| {n} | " + " | ".join(row) + " |")
        out.append("")
    for other in ("h2", "h1"):
        sp = speedups(cells, other)
        out.append(f"### Speed-up of Sheaf (JSON) over the {APPROACHES[other]} (its time / Sheaf's; > 1: Sheaf is faster)\n")
        out.append("| items | " + " | ".join(f"RTT {rtt} ms" for rtt in RTTS) + " |")
        out.append("| ---: |" + " ---: |" * len(RTTS))
        for n in NS:
            row = []
            for rtt in RTTS:
                if (rtt, n) not in sp:
                    row.append("—")
                    continue
                value, estimated = sp[(rtt, n)]
                text = f"≈ {value:.0f}× (estimate)" if estimated else f"{value:.2f}×"
                if not estimated and value > 1 and not clear_win(cells, other, rtt, n):
                    text += " (ranges overlap)"
                row.append(text)
            out.append(f"| {n} | " + " | ".join(row) + " |")
        out.append("")
    out.append("### Crossovers: where Sheaf (JSON) starts to win\n")
    out.append("The smallest N (for each RTT) and the smallest RTT (for each N) of the grid from which Sheaf is at least "
               f"{WIN:.1f}× faster by medians and its slowest run beats the other approach's fastest, there and at every "
               "larger N (or RTT). Smaller differences are ties.\n")
    out.append("| RTT | over HTTP/1.1 × 6 from | over HTTP/2 (1 connection) from |")
    out.append("| ---: | --- | --- |")
    for rtt in RTTS:
        cols = []
        for other in ("h1", "h2"):
            n = crossover_n(cells, other, rtt)
            cols.append(f"N ≥ {n}" if n else "not in this grid")
        out.append(f"| {rtt} ms | " + " | ".join(cols) + " |")
    out.append("")
    out.append("| items | over HTTP/1.1 × 6 from | over HTTP/2 (1 connection) from |")
    out.append("| ---: | --- | --- |")
    for n in NS:
        cols = []
        for other in ("h1", "h2"):
            rtt = crossover_rtt(cells, other, n)
            cols.append(f"RTT ≥ {rtt} ms" if rtt is not None else "not in this grid")
        out.append(f"| {n} | " + " | ".join(cols) + " |")
    out.append("")
    if 0 in RTTS:
        # Past one window of streams the HTTP/2 client pays one more round trip per 128 items, and
        # Sheaf does not: the RTT at which those round trips pay for Sheaf's cost at RTT 0.
        lines = []
        for n in NS:
            extra = rounds("h2", n) - 1
            s0, h0 = typical(ix.get(("json", 0, n))), typical(ix.get(("h2", 0, n)))
            if extra > 0 and s0 and h0:
                lines.append(f"N = {n}: Sheaf is {(s0 - h0) * 1000:.0f} ms slower at RTT 0 and saves {extra} round trips, "
                             f"so it breaks even at RTT ≈ {max(0.0, (s0 - h0) / extra * 1000):.1f} ms")
        if lines:
            out.append("Between the grid's RTTs, against the HTTP/2 client: " + "; ".join(lines) + ".\n")
    out.append("### Bytes on the wire between the client and its far side (TCP payload, up / down, median over every run)\n")
    out.append("| items | " + " | ".join(APPROACHES.values()) + " |")
    out.append("| ---: |" + " ---: |" * len(APPROACHES))
    for n in NS:
        row = []
        for a in APPROACHES:
            runs = [r for rtt in RTTS for r in (ix.get((a, rtt, n)) or {"runs": []})["runs"]]
            if runs:
                up, down = statistics.median(r["up"] for r in runs), statistics.median(r["down"] for r in runs)
                row.append(f"{size_text(up)} / {size_text(down)}")
            else:
                row.append("—")
        out.append(f"| {n} | " + " | ".join(row) + " |")
    out.append("")
    out.append("### The delay proxy: straight against through the proxy at RTT 0\n")
    out.append("| approach | items | straight | through the proxy (RTT 0) | ratio | proxy CPU, share of one core | chunk lateness, mean / max |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in check:
        straight = [r["wall"] for r in c["straight"]]
        proxied = [r["wall"] for r in c["proxied"]]
        share = statistics.median(r["proxy_cpu"] / r["wall"] for r in c["proxied"])
        out.append(f"| {APPROACHES[c['approach']]} | {c['n']} | {ms_text(straight)} | {ms_text(proxied)} | "
                   f"{statistics.median(proxied) / statistics.median(straight):.2f} | {share * 100:.0f} % | "
                   f"{statistics.median(r['late_mean_ms'] for r in c['proxied']):+.2f} / "
                   f"{max(r['late_max_ms'] for r in c['proxied']):+.1f} ms |")
    out.append("")
    late = []
    for rtt in RTTS:
        runs = [r for c in cells if c["rtt"] == rtt for r in c["runs"]]
        if runs:
            late.append(f"RTT {rtt} ms: {statistics.median(r['late_mean_ms'] for r in runs):+.2f} ms "
                        f"({min(r['late_min_ms'] for r in runs):+.1f} to {max(r['late_max_ms'] for r in runs):+.1f})")
    out.append("How late the proxy wrote chunks against their due time in the sweep (median of the runs' means, "
               "and the earliest and latest single chunk): " + "; ".join(late) + ".")
    errors = [f"- {APPROACHES[c['approach']]}, RTT {c['rtt']} ms, N={c['n']}: {e}" for c in cells for e in c["errors"]]
    if errors:
        out.append("")
        out.append("Errors (runs that are not data points):\n")
        out.extend(errors)
    return "\n".join(out) + "\n"


# ---- plots -----------------------------------------------------------------------------------

STYLE = {"h1": ("tab:red", "s", 2.0), "h2": ("tab:blue", "o", 2.0), "json": ("tab:green", "^", 2.4),
         "xml": ("tab:orange", "v", 1.2), "ndjson": ("tab:purple", "D", 1.2)}


def plot(data):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        print("matplotlib is not importable: no plots (make bench-distance runs this in bench/.venv, which has it)")
        return []
    meta, cells = data["meta"], data["cells"]
    ix = index(cells)
    foot = (f"{meta['date']} · {meta['machine']} · load average {meta['load_start']}–{meta['load_end']} · "
            f"median of {meta['repeat']} runs, bars min–max · nginx {THINK * 1000:.0f} ms think time per item · "
            f"Sheaf next to nginx (h2c, 1 connection) · hollow markers: estimates of runs over the {meta['cap']:.0f} s cap")
    os.makedirs(DOCS, exist_ok=True)
    written = []

    def streams(ax):
        """Where one HTTP/2 connection's streams run out: past it, the client alone pays another round trip."""
        ax.axvline(H2_STREAMS, color="tab:blue", linestyle=":", linewidth=0.8, alpha=0.6)
        ax.text(H2_STREAMS * 1.08, 0.02, f"{H2_STREAMS} streams", color="tab:blue", alpha=0.8, fontsize=7,
                transform=ax.get_xaxis_transform())

    def plain(ax, unit="", subs=(1.0, 2.0, 5.0)):
        """Tick labels as plain numbers (1, 10, 100 ms; 2×, 5×), not powers of ten."""
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{unit}"))
        ax.yaxis.set_minor_formatter(NullFormatter())

    # (a) time against N, one panel per RTT.
    cols = 2
    rows_n = math.ceil(len(RTTS) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(12, 4.6 * rows_n), sharex=True, sharey=True, squeeze=False)
    for k, rtt in enumerate(RTTS):
        ax = axes[k // cols][k % cols]
        for a, label in APPROACHES.items():
            color, marker, width = STYLE[a]
            xs, ys, lo, hi, est_x, est_y = [], [], [], [], [], []
            for n in NS:
                c = ix.get((a, rtt, n))
                if c is None or c["errors"]:
                    continue
                if c["skipped"]:
                    est_x.append(n)
                    est_y.append(c["estimate"] * 1000)
                elif c["runs"]:
                    m, mn, mx = stat([r["wall"] * 1000 for r in c["runs"]])
                    xs.append(n), ys.append(m), lo.append(m - mn), hi.append(mx - m)
            ax.errorbar(xs, ys, yerr=[lo, hi], color=color, marker=marker, linewidth=width, markersize=5,
                        capsize=3, label=label)
            if est_x:
                ax.plot(xs[-1:] + est_x, ys[-1:] + est_y, color=color, linestyle=":", linewidth=width)
                ax.plot(est_x, est_y, color=color, marker=marker, markerfacecolor="white", linestyle="none", markersize=6)
        floor = rtt + THINK * 1000
        ax.axhline(floor, color="grey", linestyle="--", linewidth=0.8)
        ax.text(NS[-1], floor * 0.93, f"floor: one round trip + think time ({floor:.0f} ms)", color="grey", fontsize=8,
                ha="right", va="top")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain(ax, subs=(1.0,))
        streams(ax)
        ax.set_title(f"RTT {rtt} ms between the client and the rest")
        ax.grid(True, which="major", alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("wall time, first byte sent → last item known (ms)")
        if k // cols == rows_n - 1:
            ax.set_xlabel("items (N)")
    for k in range(len(RTTS), rows_n * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 0.965), fontsize=9, frameon=False)
    fig.suptitle("Sheaf's distance benchmark: N items, the client alone or one bulk request to Sheaf", fontsize=13, y=0.995)
    fig.text(0.5, 0.005, foot, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.925))
    path = os.path.join(DOCS, "distance-time.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    # (b) speed-up of Sheaf (JSON) against N, one line per RTT.
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for k, other in enumerate(("h2", "h1")):
        ax = axes[0][k]
        sp = speedups(cells, other)
        for j, rtt in enumerate(RTTS):
            color = cmap(j / max(1, len(RTTS) - 1) * 0.85)
            pts = [(n, *sp[(rtt, n)]) for n in NS if (rtt, n) in sp]
            real = [(n, v) for n, v, est in pts if not est]
            est = [(n, v) for n, v, e in pts if e]
            ax.plot([n for n, _ in real], [v for _, v in real], color=color, marker="o", linewidth=2, label=f"RTT {rtt} ms")
            if est:
                ax.plot([n for n, _ in real[-1:] + est], [v for _, v in real[-1:] + est], color=color, linestyle=":", linewidth=2)
                ax.plot([n for n, _ in est], [v for _, v in est], color=color, marker="o", markerfacecolor="white", linestyle="none")
        ax.axhline(1, color="grey", linestyle="--", linewidth=1, label="break-even (below: the client alone is faster)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain(ax, "×")
        if other == "h2":
            streams(ax)
        values = [v for v, _ in sp.values()] or [1]
        ax.set_ylim(min(0.5, min(values) / 1.2), max(2, max(values) * 1.2))
        ax.set_xlabel("items (N)")
        ax.set_ylabel(f"speed-up: {'HTTP/2' if other == 'h2' else 'HTTP/1.1 × 6'} time / Sheaf time")
        ax.set_title(f"Sheaf (JSON 207) over the {APPROACHES[other]}", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=9, loc="upper left" if other == "h2" else "lower right")
    fig.suptitle("Speed-up of one bulk request to Sheaf over making the N calls yourself", fontsize=13)
    fig.text(0.5, 0.005, foot, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = os.path.join(DOCS, "distance-speedup.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def main():
    os.makedirs(RESULTS, exist_ok=True)
    raw = os.path.join(RESULTS, "distance.json")
    if len(sys.argv) > 1 and sys.argv[1] == "plot":
        with open(raw) as f:
            data = json.load(f)
        global RTTS, NS  # the grid the recorded run used
        RTTS = sorted({c["rtt"] for c in data["cells"]})
        NS = sorted({c["n"] for c in data["cells"]})
        for path in plot(data):
            print("wrote", os.path.relpath(path, ROOT))
        return
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} missing: run `swift build -c release` (make bench-distance does), or set SHEAF_BIN")
    started = time.monotonic()

    def log(message):
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    load_start = "%.2f" % os.getloadavg()[0]
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    env = Env()
    try:
        # Sheaf's connection to nginx is up before anything is timed: it lives next to the upstream.
        env.ask("rtt 0")
        bulk_request("json", env.sheaf, 1000, 60)
        log(f"nginx, Sheaf ({BIN}) and the delay proxy are up; checking the proxy at RTT 0")
        check = proxy_check(env, log)
        sweep_start = time.monotonic()
        cells = sweep(env, log)
        sweep_seconds = time.monotonic() - sweep_start
    finally:
        env.close()
    data = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "load_start": load_start, "load_end": "%.2f" % os.getloadavg()[0],
            "sheaf": f"release binary {os.path.relpath(BIN, ROOT) if BIN.startswith(ROOT) else BIN}; benchmark at {commit}",
            "command": "make bench-distance" if os.environ.get("MAKELEVEL") else
                       ("SHEAF_BIN=" + os.environ["SHEAF_BIN"] + " " if "SHEAF_BIN" in os.environ else "") + "python3 bench/distance.py",
            "repeat": REPEAT, "cap": CAP, "sweep_seconds": sweep_seconds,
            "total_seconds": time.monotonic() - started,
        },
        "cells": cells,
        "proxy_check": check,
    }
    with open(raw, "w") as f:
        json.dump(data, f, indent=1)
    text = report(data)
    with open(os.path.join(RESULTS, "distance.md"), "w") as f:
        f.write(text)
    print()
    print(text)
    for path in plot(data):
        print("wrote", os.path.relpath(path, ROOT))
    if any(c["errors"] for c in cells):
        sys.exit("some runs failed: see Errors above")


if __name__ == "__main__":
    main()
