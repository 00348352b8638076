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
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):  # CI sets CI=true
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


def test_the_runtime_image_installs_every_c_library_sheaf_links():
    """The image's runtime stage must carry a package for each shared library `sheaf` needs (the
    Swift runtime is linked statically there; glibc, libstdc++ and zlib come with Debian slim):
    a library left out starts in CI and fails in the container."""
    readelf, ldd, dpkg = need_tool("readelf"), need_tool("ldd"), need_tool("dpkg")
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run([readelf, "-d", BIN], capture_output=True, text=True, check=True).stdout)
    base = ("libswift", "libFoundation", "lib_Foundation", "libdispatch", "libBlocksRuntime", "libc.so", "libm.so",
            "ld-linux", "libgcc_s", "libstdc++", "libz.so")
    runs = [args for op, args in dockerfile_instructions() if op.upper() == "RUN"]
    runtime_installs = runs[-1].split()
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", subprocess.run([ldd, BIN], capture_output=True, text=True).stdout, re.M))
    for library in needed:
        if library.startswith(base):
            continue
        assert library in resolved and os.path.exists(resolved[library]), f"{library}: ldd does not find it on this machine"
        # dpkg records a library under /lib or /usr/lib (merged /usr): ask for both.
        path = os.path.realpath(resolved[library])
        candidates = {path, path.removeprefix("/usr")} if path.startswith("/usr/lib") else {path, "/usr" + path}
        owner = subprocess.run([dpkg, "-S", *sorted(candidates)], capture_output=True, text=True)
        assert owner.stdout.strip(), owner.stderr
        package = owner.stdout.split(":")[0]
        assert package in runtime_installs, f"{library} ({package}) is not installed by the image's runtime stage"


def test_the_container_config_is_valid_and_listens_on_every_interface(yaml):
    out = sheaf_check(CONTAINER_CONFIG)
    assert out.returncode == 0, out.stderr
    assert "listening on 0.0.0.0:8080" in out.stdout
    config = load(yaml, CONTAINER_CONFIG)
    assert config["listen"].startswith("0.0.0.0:"), "a container must listen beyond its own loopback"
    assert "demo_upstream" not in config, "production images must not run the demo upstream"


# Kubernetes.

@pytest.fixture(scope="module")
def manifests(yaml):
    with open(KUBERNETES) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def one(manifests, kind):
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def schema_errors(documents):
    """Every document checked against the Kubernetes schemas; unknown fields are errors (strict)."""
    validate = need_module("kubernetes_validate", "kubernetes-validate")
    errors = []
    for doc in documents:
        try:
            validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
    return errors


def test_the_manifests_match_the_kubernetes_schemas(manifests):
    assert {m["kind"] for m in manifests} == {"ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
                                             "HorizontalPodAutoscaler"}
    assert schema_errors(manifests) == []


def test_the_schema_check_catches_a_misspelt_or_mistyped_field(manifests):
    pdb = copy.deepcopy(one(manifests, "PodDisruptionBudget"))
    pdb["spec"]["minAvaliable"] = pdb["spec"].pop("minAvailable")
    deployment = copy.deepcopy(one(manifests, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = "yes"
    errors = schema_errors([pdb, deployment])
    assert len(errors) == 2, errors
    assert "minAvaliable" in errors[0] and "runAsNonRoot" in errors[1]


def test_the_configmap_config_is_valid(manifests, workdir):
    config = one(manifests, "ConfigMap")["data"]["config.yaml"]
    path = os.path.join(workdir, "configmap-config.yaml")
    with open(path, "w") as f:
        f.write(config)
    out = sheaf_check(path)
    assert out.returncode == 0, out.stderr
    assert "listening on 0.0.0.0:8080" in out.stdout


def pod_spec(manifests):
    return one(manifests, "Deployment")["spec"]["template"]["spec"]


def image_user():
    users = [args.strip() for op, args in dockerfile_instructions() if op.upper() == "USER"]
    assert len(users) == 1 and re.fullmatch(r"\d+(:\d+)?", users[0]), \
        f"the image's USER must be numeric, so runAsNonRoot can be checked: {users}"
    return int(users[0].split(":")[0])


def test_the_pod_runs_as_the_image_user_with_nothing_to_escalate(manifests):
    pod = pod_spec(manifests)
    uid = image_user()
    assert uid != 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_shutdown_waits_for_endpoints_then_drains_within_the_grace_period(manifests):
    pod = pod_spec(manifests)
    [container] = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep" and len(command) == 2, command
    # /bin/sleep exists only if the runtime image is a Debian one (not distroless or scratch).
    runtime = [args for op, args in dockerfile_instructions() if op.upper() == "FROM"][-1]
    assert runtime.startswith("debian:"), runtime
    pause = int(command[1])
    assert pause >= 3, "kube-proxy and ingresses need a few seconds to drop the endpoint"
    config_text = one(manifests, "ConfigMap")["data"]["config.yaml"]
    match = re.search(r"^drain_timeout:\s*(\S+)", config_text, re.M)
    drain = seconds(match.group(1)) if match else DEFAULT_DRAIN_SECONDS
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pause + drain + FLUSH_SECONDS, \
        f"terminationGracePeriodSeconds {grace} leaves no room for preStop {pause}s + drain {drain}s + flush {FLUSH_SECONDS}s"


def test_probes_ask_readyz_and_healthz_on_sheafs_port(manifests):
    pod = pod_spec(manifests)
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = re.search(r'^listen:\s*"?([^"\s]+)"?', one(manifests, "ConfigMap")["data"]["config.yaml"], re.M).group(1)
    assert ports["http"] == int(listen.rsplit(":", 1)[1])
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz" and readiness["port"] in ("http", ports["http"])
    assert liveness["path"] == "/healthz" and liveness["port"] in ("http", ports["http"])
    probe = container["livenessProbe"]
    assert probe["periodSeconds"] * probe.get("failureThreshold", 3) > DEFAULT_DRAIN_SECONDS, \
        "liveness must not restart a pod that is draining"


def test_a_disruption_budget_keeps_one_pod_serving(manifests):
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(manifests, "Service")["spec"]["selector"].items() <= labels.items()
    # With one replica, minAvailable 1 would block every node drain.
    assert one(manifests, "Deployment")["spec"]["replicas"] >= 2
    assert one(manifests, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


# systemd.

def unit_lines():
    with open(UNIT) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def unit_value(key):
    values = [line.split("=", 1)[1] for line in unit_lines() if line.startswith(key + "=")]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def test_reload_sends_sighup_and_stop_leaves_room_to_drain():
    assert unit_value("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit_value("KillSignal") == "SIGTERM"
    stop = unit_value("TimeoutStopSec")
    stop = int(stop) if stop.isdigit() else seconds(stop)  # systemd reads a bare number as seconds
    assert stop > DEFAULT_DRAIN_SECONDS + FLUSH_SECONDS


def unit_for_this_machine(tmp_path, text=None):
    """The unit with the binary and config paths pointing at the built sheaf and the container
    config, so systemd-analyze checks executables that exist."""
    with open(UNIT) as f:
        text = f.read() if text is None else text
    text = text.replace("/usr/local/bin/sheaf", os.path.abspath(BIN)).replace("/etc/sheaf/config.yaml", CONTAINER_CONFIG)
    path = tmp_path / "sheaf.service"
    path.write_text(text)
    return path


def verify_problems(path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (no systemd here): the unit is not verified")
    out = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values, only printing them: every line about the
    # unit is a problem.
    problems = [line for line in (out.stdout + out.stderr).splitlines() if str(path) in line or "sheaf.service" in line]
    return out.returncode, problems


def test_systemd_verifies_the_unit(tmp_path):
    rc, problems = verify_problems(unit_for_this_machine(tmp_path))
    assert rc == 0 and problems == [], problems


def test_systemd_verify_would_catch_a_misspelt_key(tmp_path):
    with open(UNIT) as f:
        text = f.read().replace("ProtectKernelTunables=", "ProtectKernelTunabels=")
    rc, problems = verify_problems(unit_for_this_machine(tmp_path, text))
    assert any("ProtectKernelTunabels" in p for p in problems), problems


def test_the_units_start_check_accepts_a_valid_config(tmp_path):
    path = unit_for_this_machine(tmp_path)
    pre = [line.split("=", 1)[1] for line in path.read_text().splitlines() if line.startswith("ExecStartPre=")]
    assert len(pre) == 1
    out = subprocess.run(shlex.split(pre[0]), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_unit_is_hardened(tmp_path):
    """systemd-analyze security rates exposure 0 (locked down) to 10; with the keys in the unit
    it is about 1.4. A key removed by mistake raises it past 2."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (no systemd here): exposure not measured")
    path = unit_for_this_machine(tmp_path)
    out = subprocess.run([analyze, "security", "--offline=true", "--threshold=20", "--no-pager", str(path)],
                         capture_output=True, text=True)
    if "unrecognized option" in out.stderr:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {out.stderr.strip()}")
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
    assert overall, out.stdout + out.stderr
    assert out.returncode == 0 and float(overall.group(1)) <= 2.0, out.stdout
    for key in ("ProtectKernelTunables=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "NoNewPrivileges=yes",
                "CapabilityBoundingSet="):
        assert key in unit_lines(), key


# Alerting.

def promtool():
    return need_tool("promtool")


def test_alert_rules_pass_promtool_check():
    out = subprocess.run([promtool(), "check", "rules", ALERTS], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_fires_in_promtools_unit_tests(yaml):
    out = subprocess.run([promtool(), "test", "rules", ALERT_TESTS], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {rule["alert"] for group in load(yaml, ALERTS)["groups"] for rule in group["rules"] if "alert" in rule}
    fired = {case["alertname"] for test in load(yaml, ALERT_TESTS)["tests"]
             for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert len(alerts) >= 2 and alerts == fired, f"alerts without a test that makes them fire: {alerts - fired}"


def test_alert_rules_use_only_metrics_sheaf_exports(yaml):
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    table = readme[readme.index("## Metrics"):readme.index("## Command line")]
    documented = set(re.findall(r"`(sheaf_[a-z_]+)`", table))
    with open(os.path.join(ROOT, "Sources", "Server", "SheafMetrics.swift")) as f:
        source = f.read()
    used = set()
    for group in load(yaml, ALERTS)["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"\bsheaf_[a-z_]+", rule["expr"]))
    assert used, "the rules use no Sheaf metric"
    assert used <= documented, f"not in the README's metrics table: {used - documented}"
    for name in used:
        # SheafMetrics names each metric by its middle part: sheaf_<name>_<unit>.
        stem = re.sub(r"^sheaf_|_(total|seconds)$", "", name)
        assert f'"{stem}"' in source, f"{name}: no metric \"{stem}\" in SheafMetrics.swift"


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
