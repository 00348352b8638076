"""What ships in deploy/: the container's config, the Kubernetes manifests (against the real
schemas), the systemd unit (systemd-analyze) and the Prometheus alert rules (promtool). A tool
that `make test-deps` installs and that is missing fails these tests in CI and skips them elsewhere."""
import copy
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

from conftest import BIN, ROOT

DEPLOY = os.path.join(ROOT, "deploy")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
CONTAINER_CONFIG = os.path.join(DEPLOY, "config.container.yaml")
KUBERNETES = os.path.join(DEPLOY, "kubernetes.yaml")
UNIT = os.path.join(DEPLOY, "sheaf.service")
ALERTS = os.path.join(DEPLOY, "alerts.yaml")
ALERT_TESTS = os.path.join(DEPLOY, "alerts.test.yaml")

# The Kubernetes version the manifests are validated against (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.30"
# Sheaf's default drain_timeout, and the time it gives 207s to flush after it (SheafServer).
DEFAULT_DRAIN_SECONDS = 10
FLUSH_SECONDS = 2


def missing(what):
    message = f"{what} is not installed (`make test-deps` installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def need_module(name, package):
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python package {package}")


def need_tool(name):
    path = shutil.which(name)
    if path is None:
        missing(name)
    return path


@pytest.fixture(scope="module")
def yaml():
    return need_module("yaml", "pyyaml")


def load(yaml, path):
    with open(path) as f:
        return yaml.safe_load(f)


def sheaf_check(path):
    return subprocess.run([BIN, "check", "--config", path], capture_output=True, text=True)


def seconds(duration):
    """A config duration (`10s`, `500ms`, `1m30s`) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


# The container's configuration.

def dockerfile_instructions():
    with open(DOCKERFILE) as f:
        text = f.read().replace("\\\n", " ")
    return [line.strip().split(None, 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_image_gets_the_container_config_not_the_demo_one():
    copies = [args.split() for op, args in dockerfile_instructions() if op.upper() == "COPY"]
    config_copies = [c for c in copies if c[-1] == "/etc/sheaf/config.yaml"]
    assert config_copies == [["deploy/config.container.yaml", "/etc/sheaf/config.yaml"]], config_copies


def test_the_container_config_is_valid_and_listens_on_every_interface(yaml):
    out = sheaf_check(CONTAINER_CONFIG)
    assert out.returncode == 0, out.stderr
    assert "listening on 0.0.0.0:8080" in out.stdout
    config = load(yaml, CONTAINER_CONFIG)
    assert config["listen"].startswith("0.0.0.0:"), "a container must listen beyond its own loopback"
    assert "demo_upstream" not in config, "production images must not run the demo upstream"


# The production server does not carry the demo.

def test_the_server_module_does_not_link_the_demo_upstream():
    swift = shutil.which("swift")
    if swift is None:
        pytest.skip("swift is not installed")
    out = subprocess.run([swift, "package", "dump-package"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    targets = {t["name"]: t for t in json.loads(out.stdout)["targets"]}

    def dependencies(name):
        names = set()
        for dep in targets[name]["dependencies"]:
            kind, value = next(iter(dep.items()))
            names.add(value[0])
        return names

    assert "DemoUpstream" in targets
    assert "DemoUpstream" not in dependencies("Server")
    assert {"DemoUpstream", "Server"} <= dependencies("sheaf")
    for root, _, files in os.walk(os.path.join(ROOT, "Sources", "Server")):
        for name in files:
            with open(os.path.join(root, name)) as f:
                use = re.search(r"\bimport\s+DemoUpstream\b|\bDemoUpstream(Server)?\s*[(.]", f.read())
            assert use is None, f"{name} uses the demo upstream: {use.group(0)}"
