# mailroom: `make test` is all a fresh machine needs (Rust, Go and Python present).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: test test-node testenv lint fmt clippy check-golden cargo-test demo build help bench bench-webhook \
	bench-operator soak deny audit fuzz fuzz-smoke chart-docs plugin-dist layout

help:
	@echo "make test     build the test environment (cached), lint, and run every test"
	@echo "make demo     render examples/ offline and run a capture-mode sidecar: a DKIM-signed message, no cluster"
	@echo "make soak     the sidecar under faults for ~12 min (kill -9, outages); see docs/reliability.md"
	@echo "make testenv  build only the test environment (kube-apiserver, kubelet, etcd, helm, prometheus, venv, node packages)"
	@echo "make test-node  only the real-node scenarios (root; MAILROOM_NODE_TESTS=<name part> picks some)"
	@echo "make fuzz     run every fuzz target FUZZ_SECONDS (default 600) seconds; see docs/security.md"
	@echo "make chart-docs  regenerate the chart's values.schema.json and README.md from values.yaml"
	@echo "make audit    check dependencies against the RustSec advisory database (needs network)"
	@echo "make layout   regenerate sidecar/layout/hot.ld (the sidecar's code layout) under callgrind; see docs/benchmarks.md"
	@echo "make plugin-dist  the kubectl-mailroom archive and its krew manifest in dist/ (docs/install.md)"

build:
	$(CARGO) build --workspace --bins

# Builds the pinned control plane, helm, prometheus and the Python peers into ~/.cache once.
testenv:
	bash tests/env/prepare.sh

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Golden sidecar configs must pass the binary's own validation of the document (the files they
# name exist only in a pod, so not --check-config, which also checks those).
check-golden: build
	for f in tests/fixtures/sidecar-config/*.yaml; do target/debug/mailroom-sidecar --check-document "$$f"; done

cargo-test: testenv
	eval "$$(bash tests/env/prepare.sh --print-env)"; \
	export MAILROOM_PYTHON="$$MAILROOM_TESTENV_PYTHON"; \
	$(CARGO) test --workspace --all-targets --no-fail-fast

# The chart's derived files; tests/e2e/tests/chart.rs fails when the committed ones differ.
chart-docs: testenv
	python3 charts/mailroom/hack/generate.py
	eval "$$(bash tests/env/prepare.sh --print-env)"; \
	"$$MAILROOM_TESTENV_BIN/helm-docs" --chart-search-root charts/mailroom --skip-version-footer --log-level error

# Dependency policy in deny.toml. Advisories need the advisory database (network): `make audit`.
deny: testenv
	eval "$$(bash tests/env/prepare.sh --print-env)"; \
	"$$MAILROOM_TESTENV_BIN/cargo-deny" --locked check licenses bans sources

audit: testenv
	eval "$$(bash tests/env/prepare.sh --print-env)"; \
	"$$MAILROOM_TESTENV_BIN/cargo-deny" --locked check advisories

# Long fuzzing runs, one target at a time (docs/security.md records results).
FUZZ_SECONDS ?= 600
fuzz: testenv
	bash fuzz/run.sh $(FUZZ_SECONDS)

# A short run of every fuzz target from its seeds, so that make test catches a regression.
fuzz-smoke: testenv
	FUZZ_CORPUS=fresh bash fuzz/run.sh 8

test: lint check-golden deny fuzz-smoke cargo-test

# Our images in real pods on a kubelet + containerd, inside namespaces the test makes (docs/testing.md,
# "The node"). Part of cargo-test too.
test-node: testenv
	eval "$$(bash tests/env/prepare.sh --print-env)"; \
	$(CARGO) test -p mailroom-e2e --test node

demo: build
	bash examples/demo.sh

# kubectl-mailroom for krew: dist/kubectl-mailroom_linux_amd64.tar.gz and dist/mailroom.yaml.
PLUGIN_VERSION ?= v$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
plugin-dist:
	$(CARGO) build --release -p kubectl-mailroom
	bash plugin/krew/package.sh $(PLUGIN_VERSION) dist target/release/kubectl-mailroom

# Benchmarks are not part of `make test`: slow, and noisy on shared machines. See docs/benchmarks.md.
bench:
	bash bench/run.sh
	$(MAKE) bench-webhook bench-operator
	"$${XDG_CACHE_HOME:-$$HOME/.cache}/mailroom/bench/venv/bin/python" bench/report.py bench/results/latest.json

# The functions the sidecar runs, for its release code layout (sidecar/build.rs). Regenerate when
# sidecar/tests/layout.rs says the list is stale. Needs valgrind and Postfix's smtp-source.
layout:
	command -v valgrind >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "make layout: valgrind missing: apt-get install valgrind" >&2; exit 1; }; apt-get install -y -qq valgrind >/dev/null; }
	command -v smtp-source >/dev/null || { echo "make layout: smtp-source missing: run make bench once (installs Postfix)" >&2; exit 1; }
	MAILROOM_LAYOUT=default CARGO_TARGET_DIR=target/layout $(CARGO) build --release --bin mailroom-sidecar
	python3 sidecar/layout/generate.py target/layout/release/mailroom-sidecar

# Admission latency of the injection webhook (1,000 dry-run pod creations on the real apiserver).
bench-webhook: testenv
	eval "$$(bash tests/env/prepare.sh --print-env)"; \
	MAILROOM_BENCH_ADMISSIONS=1000 \
	$(CARGO) test --release -p mailroom-operator --test webhook repeated_admissions -- --nocapture 2>&1 \
	  | grep "admission through the apiserver" | tee bench/results/webhook.txt

# The operator binary reconciling 1,000 Relays in 50 namespaces over 100 MailDomains.
bench-operator: testenv
	eval "$$(bash tests/env/prepare.sh --print-env)"; \
	MAILROOM_SCALE_RELAYS=1000 MAILROOM_SCALE_NAMESPACES=50 MAILROOM_SCALE_DOMAINS=100 \
	MAILROOM_SCALE_OUT="$(CURDIR)/bench/results/operator.json" \
	$(CARGO) test --release -p mailroom-operator --test scale -- --nocapture

# Faults at length (not part of `make test`): >= 20 kill -9 trials under load, a smarthost outage
# (SOAK_ARGS="--outage-seconds 600" for longer), 421 answers, a hang after DATA, hostile clients.
# Loopback only.
soak: testenv
	$(CARGO) build --release --bin mailroom-sidecar
	eval "$$(bash tests/env/prepare.sh --print-env)"; \
	MAILROOM_PYTHON="$$MAILROOM_TESTENV_PYTHON" python3 bench/soak.py $(SOAK_ARGS)
