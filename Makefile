# Sheaf: `make run` to try it, `make test` for the whole suite, `make bench` for the benchmark,
# `make bench-distance` for the client alone against Sheaf at a distance (plots in docs/);
# `make fuzz`, `make asan`, `make tsan` for the fuzz targets and the sanitizers (see FUZZING.md).
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BUILD_PACKAGES := libcurl4-openssl-dev libnghttp2-dev libxml2-dev libjemalloc-dev
TEST_PACKAGES := nginx libnginx-mod-http-echo curl openssl prometheus python3-pip
BIN := .build/debug/sheaf
# Python packages the deploy checks need, pinned (the Kubernetes version is pinned in Tests/e2e/test_deploy.py),
# and the two WebDAV client libraries that parse the 207's properties in Tests/e2e/test_properties.py.
KUBERNETES_VALIDATE := 1.33.1
PY_PINNED := kubernetes-validate==$(KUBERNETES_VALIDATE) pyyaml==6.0.3 opentelemetry-proto==1.45.2 webdav4==0.11.0 webdavclient3==3.14.7
# The distance benchmark's plotting library, pinned, in a virtual environment of its own.
BENCH_VENV := bench/.venv
MATPLOTLIB := 3.10.8

# $(call install_missing,PACKAGES): apt-get install only the packages dpkg does not have yet.
install_missing = missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

.PHONY: deps test-deps bench-deps build release run test bench bench-distance fuzz asan tsan clean

# Debian packages the build needs, installed only when missing.
deps:
	@$(call install_missing,$(BUILD_PACKAGES))

# What the end-to-end tests drive: nginx as an upstream, curl as a client, promtool, httpx; and
# what checks deploy/: promtool, kubernetes-validate (the Kubernetes schemas), PyYAML; and
# opentelemetry-proto, which decodes the spans the tracing test receives; webdav4 and webdavclient3,
# which read the 207 as WebDAV clients do.
test-deps: deps
	@$(call install_missing,$(TEST_PACKAGES))
	@python3 -c "import httpx, h2, pytest, yaml, opentelemetry.proto, webdav4.multistatus, webdav3.client, kubernetes_validate as k; assert k.__version__ == '$(KUBERNETES_VALIDATE)'" 2>/dev/null \
	  || python3 -m pip install -q "httpx[http2]" pytest $(PY_PINNED) \
	  || python3 -m pip install -q --break-system-packages "httpx[http2]" pytest $(PY_PINNED)

# The benchmark's peers: h2load and nghttpx (nginx and its echo module come with test-deps), and
# valgrind, whose callgrind counts the pipeline benchmark's instructions.
bench-deps: test-deps
	@$(call install_missing,nghttp2-client nghttp2-proxy valgrind util-linux procps)

build: deps
	swift build

release: deps
	swift build -c release

run: build
	@echo
	@echo "Sheaf on http://127.0.0.1:8080 with the demo upstream on 127.0.0.1:9090. Try:"
	@echo "  curl -s -X POST http://127.0.0.1:8080/bulk/users -H 'Content-Type: application/json' -d '{\"ids\":[1,2,13,999]}'"
	@echo "  curl -s -X POST http://127.0.0.1:8080/bulk/users -H 'Content-Type: application/json' -H 'Accept: application/xml' -d '{\"ids\":[1,2,13,999]}'"
	@echo
	$(BIN) serve --config config.yaml

test: test-deps build
	swift test --no-parallel
	python3 -m pytest -q Tests/e2e

bench: bench-deps release
	python3 bench/run.py
	bench/pipeline.sh

# The client alone (HTTP/1.1 × 6, one HTTP/2 connection) against one bulk request to Sheaf, through
# a delay proxy at RTT 0-100 ms (bench/distance.py, about 5 minutes): bench/results/distance.md and docs/*.png.
bench-distance: bench-deps release $(BENCH_VENV)/.matplotlib-$(MATPLOTLIB)
	$(BENCH_VENV)/bin/python bench/distance.py

# python3 -m venv needs python3-venv on Debian; the stamp file names the pinned version, so a new pin reinstalls.
$(BENCH_VENV)/.matplotlib-$(MATPLOTLIB):
	@$(call install_missing,python3-venv)
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q matplotlib==$(MATPLOTLIB)
	touch $@

# Each libFuzzer target (Fuzz/) for SECONDS seconds, with AddressSanitizer, built into .build-fuzz.
SECONDS ?= 60
fuzz: deps
	Fuzz/run.sh $(SECONDS)

# The unit tests and one end-to-end batch under AddressSanitizer (.build-asan) or ThreadSanitizer (.build-tsan).
asan: deps
	@$(call install_missing,curl)
	Tests/sanitize.sh address

tsan: deps
	@$(call install_missing,curl)
	Tests/sanitize.sh thread

clean:
	rm -rf .build .build-fuzz .build-asan .build-tsan
