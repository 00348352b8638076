#!/usr/bin/env python3
"""Soak: many concurrent clients send mixed bulk requests to Sheaf for a fixed, bounded time,
against the demo upstream (started here, with faults on request), while Sheaf's RSS and open
file descriptors are sampled.

Mixed: JSON and XML explicit batches and template batches; over the h2c front and HTTP/1.1;
upstreams over h2c and HTTP/1.1 (libcurl); items that answer, fail (404, 503), are slow, or are
reset by the upstream; and some clients that hang up before their 207 ends.

Reports errors (expected 0), items lost or doubled in complete 207s (expected 0), p50/p99 batch
latency, and RSS and descriptors at the start and the end (expected flat).

    python3 bench/soak.py                  # 10 minutes, 16 clients
    SOAK_SECONDS=60 SOAK_CLIENTS=8 python3 bench/soak.py
"""
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from run import BIN, free_port, rss_kib, stop, wait_port  # noqa: E402

SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "16"))
DAV = "{DAV:}"
SHEAF_NS = "{urn:sheaf}"


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def start(dirname):
    import subprocess
    demo_port, port = free_port(), free_port()
    demo = subprocess.Popen([BIN, "demo-upstream", "--listen", f"127.0.0.1:{demo_port}", "--log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(dirname, "demo.err"), "w"))
    wait_port(demo_port, demo)
    cfg = os.path.join(dirname, "soak.yaml")
    with open(cfg, "w") as f:
        f.write(f"""listen: "127.0.0.1:{port}"
access_log: off
upstreams:
  h2: {{url: "http://127.0.0.1:{demo_port}", protocol: h2c, connections: 2, timeout: 3s}}
  h1: {{url: "http://127.0.0.1:{demo_port}", protocol: http1, connections: 16, timeout: 3s}}
routes:
  - {{name: batch, method: POST, path: /batch, upstream: h2, concurrency: 50}}
  - {{name: batch1, method: POST, path: /batch1, upstream: h1, concurrency: 16}}
  - {{name: users, method: POST, path: /users, upstream: h2, concurrency: 100, max_items: 10000,
      fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}}}
""")
    sheaf = subprocess.Popen([BIN, "serve", "--config", cfg, "--log-level", "error"],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(dirname, "sheaf.err"), "w"))
    wait_port(port, sheaf)
    return demo, sheaf, port


def explicit_items(rng, n):
    """(id, url) pairs with a mix of outcomes: answers, 404s, 503s, slow ones, resets."""
    items = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.70:
            url = f"/users/{rng.randint(1, 120)}"
        elif roll < 0.80:
            url = "/status/503"
        elif roll < 0.88:
            url = f"/users/{rng.randint(1, 100)}?delay_ms={rng.randint(1, 300)}"
        elif roll < 0.95:
            url = "/reset"
        else:
            url = f"/bytes/{rng.randint(0, 4096)}"
        items.append((f"i{i}", url))
    return items


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.batches = self.items = self.errors = self.lost = self.doubled = self.hangups = 0
        self.latencies = []
        self.examples = []

    def error(self, what):
        with self.lock:
            self.errors += 1
            if len(self.examples) < 5:
                self.examples.append(what)

    def done(self, expected, got, seconds):
        """`expected`: the ids sent; `got`: the ids the 207 reported, in order."""
        with self.lock:
            self.batches += 1
            self.items += len(got)
            self.latencies.append(seconds)
            seen = set()
            for id in got:
                if id in seen:
                    self.doubled += 1
                seen.add(id)
            self.lost += len(set(expected) - seen)


def one_batch(rng, port, tally, h2, h1):
    kind = rng.choice(["json", "json1", "xml", "template", "hangup"])
    n = rng.choice([1, 5, 20, 100, 400])
    started = time.monotonic()
    client = h2 if rng.random() < 0.5 else h1
    if kind == "template":
        ids = [rng.randint(1, 120) for _ in range(n)]
        r = client.post(f"http://127.0.0.1:{port}/users", json=ids, timeout=60)
        if r.status_code != 207:
            return tally.error(f"template: {r.status_code} {r.text[:200]}")
        got = [x["id"] for x in r.json()["results"]]
        return tally.done([str(i) for i in range(n)], got, time.monotonic() - started)
    items = explicit_items(rng, n)
    if kind == "hangup":
        body = json.dumps({"requests": [{"id": i, "method": "GET", "url": u} for i, u in items]}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            s.recv(rng.choice([1, 200, 2000]))  # some of the 207, then gone
        with tally.lock:
            tally.hangups += 1
        return
    path = "/batch1" if kind == "json1" else "/batch"
    if kind == "xml":
        body = '<S:batch xmlns:S="urn:sheaf" xmlns:D="DAV:">' + "".join(
            f'<S:request id="{i}" method="GET"><D:href>{u.replace("&", "&amp;")}</D:href></S:request>' for i, u in items) + "</S:batch>"
        r = client.post(f"http://127.0.0.1:{port}{path}", content=body.encode(),
                        headers={"content-type": "application/xml"}, timeout=60)
        if r.status_code != 207:
            return tally.error(f"xml: {r.status_code} {r.text[:200]}")
        root = ET.fromstring(r.content)
        got = [resp.findtext(f"{SHEAF_NS}id") for resp in root.findall(f"{DAV}response")]
    else:
        r = client.post(f"http://127.0.0.1:{port}{path}", json={"requests": [{"id": i, "method": "GET", "url": u} for i, u in items]},
                        timeout=60)
        if r.status_code != 207:
            return tally.error(f"json: {r.status_code} {r.text[:200]}")
        got = [x["id"] for x in r.json()["results"]]
    tally.done([i for i, _ in items], got, time.monotonic() - started)


def client_loop(seed, port, deadline, tally):
    rng = random.Random(seed)
    with httpx.Client(http1=False, http2=True) as h2, httpx.Client() as h1:
        while time.monotonic() < deadline:
            try:
                one_batch(rng, port, tally, h2, h1)
            except Exception as e:  # noqa: BLE001 -- any exception is a finding
                tally.error(repr(e)[:200])


def main():
    dirname = tempfile.mkdtemp(prefix="sheaf-soak-")
    demo, sheaf, port = start(dirname)
    try:
        time.sleep(1)
        start_rss, start_fds = rss_kib(sheaf.pid, "VmRSS"), fds(sheaf.pid)
        samples = []
        tally = Tally()
        deadline = time.monotonic() + SECONDS
        threads = [threading.Thread(target=client_loop, args=(i, port, deadline, tally)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        while time.monotonic() < deadline:
            samples.append((rss_kib(sheaf.pid, "VmRSS"), fds(sheaf.pid)))
            time.sleep(1)
        for t in threads:
            t.join(timeout=120)
        time.sleep(3)  # let the hung-up batches' cancellations and idle connections settle
        end_rss, end_fds = rss_kib(sheaf.pid, "VmRSS"), fds(sheaf.pid)
        lat = sorted(tally.latencies)
        p50 = statistics.median(lat) * 1000 if lat else 0
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else 0
        peak_rss = max(s[0] for s in samples)
        peak_fds = max(s[1] for s in samples)
        print(f"### Soak: {SECONDS} s, {CLIENTS} clients ({time.strftime('%Y-%m-%d')})\n")
        print("| measure | value |")
        print("| --- | ---: |")
        print(f"| complete 207s | {tally.batches} ({tally.items} items) |")
        print(f"| clients that hung up mid-207 | {tally.hangups} |")
        print(f"| errors | {tally.errors} |")
        print(f"| items lost / doubled | {tally.lost} / {tally.doubled} |")
        print(f"| batch latency p50 / p99 | {p50:.1f} ms / {p99:.1f} ms |")
        print(f"| RSS start / peak / end | {start_rss / 1024:.1f} / {peak_rss / 1024:.1f} / {end_rss / 1024:.1f} MiB |")
        print(f"| open descriptors start / peak / end | {start_fds} / {peak_fds} / {end_fds} |")
        for example in tally.examples:
            print(f"\nerror: {example}")
        if sheaf.poll() is not None:
            print(f"\nSheaf exited with {sheaf.returncode}")
            sys.exit(1)
        sys.exit(0 if tally.errors == 0 and tally.lost == 0 and tally.doubled == 0 else 1)
    finally:
        stop(sheaf)
        stop(demo)


if __name__ == "__main__":
    main()
