"""SIGHUP reloads config.yaml without dropping a batch: routes come and go under load, a broken
file is refused while a slow batch runs, a changed upstream's old pool finishes its batches, and
front TLS certificates are picked up by new connections."""
import os
import re
import signal
import ssl
import socket
import textwrap
import threading
import time

import httpx
from conftest import Sheaf


def _config(nginx, routes, upstream_extra=""):
    return f"""
        upstreams:
          h2: {{url: "http://127.0.0.1:{nginx.h2c}", protocol: h2c{upstream_extra}}}
        routes:
        """ + "".join(f"""
          - name: {name}
            method: POST
            path: {path}
            upstream: h2
            fan_out: {{items: "", method: GET, path: "{item}"}}
        """ for name, path, item in routes)


def _rewrite(s, text):
    tmp = s.config_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f'listen: "127.0.0.1:{s.port}"\n' + textwrap.dedent(text))
    os.replace(tmp, s.config_path)


def _reloads(s):
    text = httpx.get(s.url + "/metrics").text
    counts = {outcome: float(v) for outcome, v in re.findall(r'^sheaf_config_reloads_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}
    last = re.search(r'^sheaf_config_last_reload_success_timestamp_seconds (\S+)$', text, re.M)
    return counts, float(last.group(1)) if last else None


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _hup(s):
    os.kill(s.process.pid, signal.SIGHUP)


def _status(s, path, body=(1,)):
    return httpx.post(s.url + path, json=list(body), timeout=10).status_code


class SlowBatch:
    """One batch of `n` items on /slow, sent in the background; `ids()` waits for its 207 and
    returns its item ids after checking that every item got 200."""

    def __init__(self, s, n):
        self.n, self.result = n, {}
        self.thread = threading.Thread(target=lambda: self.result.update(r=httpx.post(s.url + "/slow", json=list(range(n)), timeout=30)))
        self.thread.start()
        time.sleep(0.3)

    def ids(self):
        self.thread.join(timeout=30)
        r = self.result["r"]
        assert r.status_code == 207
        assert all(x["status"] == 200 for x in r.json()["results"]), r.text
        return sorted(int(x["id"]) for x in r.json()["results"])


class Load:
    """Batches of 50 items sent back to back on one route until stopped; each 207 is checked to
    account for every item exactly once."""

    def __init__(self, url):
        self.url, self.stop_flag, self.batches, self.errors = url, False, 0, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        with httpx.Client(timeout=20) as client:
            while not self.stop_flag:
                try:
                    r = client.post(self.url, json=list(range(50)))
                    ids = sorted(int(x["id"]) for x in r.json()["results"]) if r.status_code == 207 else None
                    if r.status_code != 207 or ids != list(range(50)) or any(x["status"] != 200 for x in r.json()["results"]):
                        self.errors.append((r.status_code, r.text[:300]))
                    self.batches += 1
                except Exception as e:  # noqa: BLE001 -- any failure is a finding
                    self.errors.append(repr(e))

    def stop(self):
        self.stop_flag = True
        self.thread.join(timeout=30)
        return self.batches, self.errors


def test_a_route_is_added_and_removed_under_load(workdir, nginx):
    s = Sheaf(workdir, "reload-routes", _config(nginx, [("users", "/users", "/users/{item}")]))
    try:
        assert _status(s, "/more") == 404
        load = Load(s.url + "/users")
        time.sleep(0.3)
        _rewrite(s, _config(nginx, [("users", "/users", "/users/{item}"), ("more", "/more", "/users/{item}")]))
        _hup(s)
        assert _wait(lambda: _status(s, "/more") == 207), "the added route never answered"
        _rewrite(s, _config(nginx, [("users", "/users", "/users/{item}")]))
        _hup(s)
        assert _wait(lambda: _status(s, "/more") == 404), "the removed route still answers"
        time.sleep(0.3)
        batches, errors = load.stop()
        assert errors == []
        assert batches >= 3
        counts, last = _reloads(s)
        assert counts.get("success") == 2
        assert last is not None and abs(last - time.time()) < 60
        assert "configuration reloaded" in s.process.output()
    finally:
        s.stop()


def test_a_broken_file_is_refused_while_a_slow_batch_runs(workdir, nginx):
    s = Sheaf(workdir, "reload-broken", _config(nginx, [("slow", "/slow", "/sleep/{item}")]))
    try:
        slow = SlowBatch(s, 20)
        _rewrite(s, _config(nginx, [("slow", "/slow", "/sleep/{item}")]) + "\n          - name: broken\n            method: POST\n")
        _hup(s)
        assert _wait(lambda: _reloads(s)[0].get("invalid") == 1)
        assert slow.ids() == list(range(20))
        log = s.process.output()
        assert re.search(r"reload-broken\.yaml:\d+:\d+: route 'broken' is missing 'path'", log), log[-2000:]
        assert "keeping the running configuration" in log
        assert _reloads(s)[0].get("success") == 0
        assert _status(s, "/slow", body=()) == 207  # the old configuration still serves
    finally:
        s.stop()


def test_a_changed_upstream_finishes_its_batches_on_the_old_pool(workdir, nginx):
    s = Sheaf(workdir, "reload-upstream", _config(nginx, [("slow", "/slow", "/sleep/{item}")]))
    try:
        slow = SlowBatch(s, 10)
        _rewrite(s, _config(nginx, [("slow", "/slow", "/sleep/{item}"), ("fast", "/fast", "/users/{item}")],
                            upstream_extra=", timeout: 7s, connections: 1"))
        _hup(s)
        assert _wait(lambda: _status(s, "/fast") == 207)
        assert slow.ids() == list(range(10))
        assert _wait(lambda: "upstream pool retired" in s.process.output())
    finally:
        s.stop()


def _served_certificate(port):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def test_front_certificates_are_reloaded(workdir, nginx, test_ca):
    cert, key = test_ca.sign("front-reload", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\n")
    with open(cert, "rb") as f:
        first = ssl.PEM_cert_to_DER_cert(f.read().decode())
    config = _config(nginx, [("users", "/users", "/users/{item}")]) + f"\n        tls: {{certificate: {cert}, private_key: {key}}}\n"
    s = Sheaf(workdir, "reload-tls", config, https=True)
    try:
        assert _served_certificate(s.port) == first
        renewed, renewed_key = test_ca.sign("front-reload-2", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\n")
        os.replace(renewed, cert)
        os.replace(renewed_key, key)
        with open(cert, "rb") as f:
            second = ssl.PEM_cert_to_DER_cert(f.read().decode())
        assert second != first
        _hup(s)
        assert _wait(lambda: _served_certificate(s.port) == second), "new connections still get the old certificate"
        r = httpx.post(s.url + "/users", json=[1, 2], verify=ssl.create_default_context(cafile=test_ca.ca), timeout=10)
        assert r.status_code == 207
    finally:
        s.stop()
