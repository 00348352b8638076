"""End-to-end fixtures: the built `sheaf` binary, its demo upstream and nginx, each started on a
free loopback port and stopped by process id."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SHEAF_BIN", os.path.join(ROOT, ".build", "debug", "sheaf"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


class Process:
    """A child process with its output in a file; stopped by pid, SIGTERM then SIGKILL."""

    def __init__(self, args, log_path, port=None, env=None):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=None if env is None else {**os.environ, **env})
        if port is not None:
            wait_for_port(port, self.proc)

    @property
    def pid(self):
        return self.proc.pid

    def output(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def workdir():
    path = tempfile.mkdtemp(prefix="sheaf-e2e-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def demo(workdir):
    port = free_port()
    p = Process([BIN, "demo-upstream", "--listen", f"127.0.0.1:{port}"], os.path.join(workdir, "demo.log"), port)
    yield port
    p.stop()


NGINX_CONF = """
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 4096; }}
http {{
    log_format sheaf '$connection $connection_requests $request_method $request_uri $server_protocol $status';
    access_log {dir}/access.log sheaf;
    log_format forwarded escape=json '{{"rid":"$http_x_request_id","xff":"$http_x_forwarded_for","proto":"$http_x_forwarded_proto","fwd":"$http_forwarded","uri":"$request_uri","protocol":"$server_protocol","tp":"$http_traceparent","auth":"$http_authorization"}}';
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/json;
    server {{
        listen 127.0.0.1:{h2c} http2;
        location ~ ^/headers/(\\d+)$ {{ access_log {dir}/forwarded.log forwarded; add_header ETag '"e$1"'; add_header X-Internal-Token secret; add_header Set-Cookie s=1; return 200 '{{"id":$1}}'; }}
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"via":"nginx"}}'; }}
        location ~ ^/sleep/(\\d+)$ {{ echo_sleep 2; echo '{{"id":$1}}'; }}
        location ~ ^/pause/(\\d+)$ {{ echo_sleep 0.7; echo '{{"id":$1}}'; }}
        location ~ ^/blob/ {{ default_type application/octet-stream; echo_duplicate 1048576 "a"; }}
        location ~ ^/unavailable/(\\d+)$ {{ add_header Retry-After 0 always; return 503 '{{"id":$1,"error":"busy"}}'; }}
        location ~ ^/big/(\\d+)$ {{ return 200 '{{"id":$1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}'; }}
        location / {{ return 404 '{{"error":"not found"}}'; }}
    }}
    server {{
        listen 127.0.0.1:{h2tls} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"via":"nginx-h2-tls"}}'; }}
    }}
    server {{
        listen 127.0.0.1:{mtls} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"via":"nginx-mtls","client":"$ssl_client_s_dn"}}'; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"via":"nginx-tls"}}'; }}
    }}
    server {{
        listen 127.0.0.1:{http1};
        location ~ ^/headers/(\\d+)$ {{ access_log {dir}/forwarded.log forwarded; add_header ETag '"e$1"'; add_header X-Internal-Token secret; add_header Set-Cookie s=1; return 200 '{{"id":$1}}'; }}
        location ~ ^/sleep/(\\d+)$ {{ echo_sleep 2; echo '{{"id":$1}}'; }}
        location ~ ^/users/(\\d+)$ {{ return 200 '{{"id":$1,"via":"nginx"}}'; }}
        location ~ ^/blob/ {{ default_type application/octet-stream; echo_duplicate 1048576 "a"; }}
        location / {{ return 404 '{{"error":"not found"}}'; }}
    }}
}}
"""


class ThrowAwayCA:
    """A throw-away CA (ca.pem), a server certificate it signed for 127.0.0.1 and localhost
    (server.pem / server.key), and a client certificate it signed (client.pem / client.key)."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.dir = directory

        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                      "-subj", "/CN=Sheaf test CA")
        self.sign("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self.sign("client", "/CN=sheaf-test-client", "extendedKeyUsage=clientAuth\n")
        self.ca = self.path("ca.pem")
        self.server_cert, self.server_key = self.path("server.pem"), self.path("server.key")
        self.client_cert, self.client_key = self.path("client.pem"), self.path("client.key")

    def _openssl(self, *args):
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)

    def sign(self, name, subject, ext):
        """A key (NAME.key) and a certificate this CA signed (NAME.pem); returns their paths."""
        self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        with open(self.path(f"{name}.ext"), "w") as f:
            f.write(ext)
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                      "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
        return self.path(f"{name}.pem"), self.path(f"{name}.key")

    def path(self, name):
        return os.path.join(self.dir, name)


@pytest.fixture(scope="session")
def test_ca(workdir):
    return ThrowAwayCA(os.path.join(workdir, "ca"))


class Nginx:
    def __init__(self, workdir, ca):
        self.dir = os.path.join(workdir, "nginx")
        os.makedirs(self.dir, exist_ok=True)
        self.h2c = free_port()
        self.http1 = free_port()
        self.https = free_port()
        self.h2tls = free_port()
        self.mtls = free_port()
        self.ca = ca.ca
        self.client_cert, self.client_key = ca.client_cert, ca.client_key
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.dir, h2c=self.h2c, http1=self.http1, https=self.https, h2tls=self.h2tls,
                                      mtls=self.mtls, cert=ca.server_cert, key=ca.server_key, ca=ca.ca))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = Process([nginx, "-p", self.dir, "-c", conf], os.path.join(self.dir, "stdout.log"), self.h2c)
        wait_for_port(self.http1, self.process.proc)

    def _lines(self, name):
        path = os.path.join(self.dir, name)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return f.read().splitlines()

    def error_lines(self):
        return self._lines("error.log")

    def access_lines(self):
        return self._lines("access.log")

    def forwarded_lines(self):
        """What /headers/N saw: request id, X-Forwarded-*, Forwarded and uri, one JSON object each."""
        return [json.loads(line) for line in self._lines("forwarded.log")]


@pytest.fixture(scope="session")
def nginx(workdir, test_ca):
    n = Nginx(workdir, test_ca)
    yield n
    n.process.stop()


def one_route_sheaf(workdir, name, upstream_port, top="", upstream="protocol: h2c", path="/slow"):
    """A Sheaf of its own (for tests that stop or starve it): one explicit-batch route to one upstream."""
    return Sheaf(workdir, name, f"""
        {top}
        upstreams:
          demo: {{url: "http://127.0.0.1:{upstream_port}", {upstream}}}
        routes:
          - name: only
            method: POST
            path: {path}
            upstream: demo
            concurrency: 5
        """)


def fan_out_sheaf(workdir, name, upstream, item_path, top=(), path="/b", tls=None, max_items=1000):
    """A Sheaf of its own with one fan-out route: POST `path` with a JSON array, one GET
    `item_path` per element, to `upstream` (a YAML flow mapping). `top`: top-level config lines.
    `tls`: the keys of a `tls` block (its url is then https)."""
    if tls:
        top = [*top, "tls: {" + ", ".join(f"{k}: {v}" for k, v in tls.items()) + "}"]
    head = "".join(line + "\n        " for line in top)
    return Sheaf(workdir, name, f"""
        {head}upstreams:
          up: {upstream}
        routes:
          - name: r
            method: POST
            path: {path}
            upstream: up
            max_items: {max_items}
            fan_out: {{items: "", method: GET, path: "{item_path}"}}
        """, https=bool(tls))


class Sheaf:
    """`sheaf serve` with a config written for the test."""

    def __init__(self, workdir, name, config, https=False, env=None):
        self.port = free_port()
        self.config_path = os.path.join(workdir, f"{name}.yaml")
        with open(self.config_path, "w") as f:
            f.write(f'listen: "127.0.0.1:{self.port}"\n' + textwrap.dedent(config))
        self.process = Process([BIN, "serve", "--config", self.config_path], os.path.join(workdir, f"{name}.log"), self.port,
                               env=env)
        self.url = f"{'https' if https else 'http'}://127.0.0.1:{self.port}"

    def stop(self):
        return self.process.stop()


@pytest.fixture(scope="session")
def sheaf(workdir, demo, nginx):
    """One Sheaf in front of the demo upstream (h2c and HTTP/1.1) and nginx (h2c and HTTP/1.1)."""
    s = Sheaf(workdir, "main", f"""
        upstreams:
          demo:
            url: http://127.0.0.1:{demo}
            protocol: h2c
            timeout: 1s
          demo1:
            url: http://127.0.0.1:{demo}
            protocol: http1
            connections: 4
            timeout: 1s
          tiny:
            url: http://127.0.0.1:{demo}
            protocol: h2c
            max_response_bytes: 100
          tiny1:
            url: http://127.0.0.1:{demo}
            protocol: http1
            max_response_bytes: 100
          nginx:
            url: http://127.0.0.1:{nginx.h2c}
            protocol: h2c
            connections: 2
          nginx1:
            url: http://127.0.0.1:{nginx.http1}
            protocol: http1
            connections: 6
          nginx1-pair:
            url: http://127.0.0.1:{nginx.http1}
            protocol: http1
            connections: 2
          tls:
            url: https://127.0.0.1:{nginx.https}
            protocol: http1
            ca_file: {nginx.ca}
          tls-untrusted:
            url: https://127.0.0.1:{nginx.https}
            protocol: http1
          nowhere:
            url: http://127.0.0.1:{free_port()}
            protocol: h2c
          nowhere1:
            url: http://127.0.0.1:{free_port()}
            protocol: http1
        routes:
          - name: users
            method: POST
            path: /bulk/users
            upstream: demo
            fan_out: {{items: /ids, method: GET, path: "/users/{{item}}"}}
            max_items: 20
          - name: users1
            method: POST
            path: /bulk/users1
            upstream: demo1
            fan_out: {{items: /ids, method: GET, path: "/users/{{item}}"}}
          - name: batch
            method: POST
            path: /batch
            upstream: demo
            max_body_bytes: 64KiB
          - name: batch1
            method: POST
            path: /batch1
            upstream: demo1
          - name: nginx
            method: POST
            path: /nginx/users
            upstream: nginx
            fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}
            concurrency: 200
            max_items: 10000
          - name: nginx-big
            method: POST
            path: /nginx/big
            upstream: nginx
            fan_out: {{items: "", method: GET, path: "/big/{{item}}"}}
            concurrency: 100
            max_items: 10000
          - name: deadline
            method: POST
            path: /nginx/sleep
            upstream: nginx
            fan_out: {{items: "", method: GET, path: "/sleep/{{item}}"}}
            concurrency: 4
            deadline: 500ms
          - name: deadline1
            method: POST
            path: /nginx1/sleep
            upstream: nginx1-pair
            fan_out: {{items: "", method: GET, path: "/sleep/{{item}}"}}
            concurrency: 4
            deadline: 500ms
          - name: nginx1
            method: POST
            path: /nginx1/users
            upstream: nginx1
            fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}
            concurrency: 200
            max_items: 10000
          - name: nowhere
            method: POST
            path: /nowhere
            upstream: nowhere
          - name: nowhere1
            method: POST
            path: /nowhere1
            upstream: nowhere1
          - name: tiny
            method: PROPFIND
            path: /tiny
            upstream: tiny
          - name: tiny1
            method: PROPFIND
            path: /tiny1
            upstream: tiny1
          - name: tls
            method: POST
            path: /tls/users
            upstream: tls
            fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}
          - name: tls-untrusted
            method: POST
            path: /tls-untrusted/users
            upstream: tls-untrusted
            fan_out: {{items: "", method: GET, path: "/users/{{item}}"}}
          - name: ordered
            method: POST
            path: /ordered
            upstream: demo
            order: request
          - name: forward
            method: POST
            path: /forward
            upstream: demo1
            forward_headers: [Authorization, X-Tenant, Cookie]
          - name: delete
            method: DELETE
            path: /batch
            upstream: demo
        """)
    yield s
    s.stop()
