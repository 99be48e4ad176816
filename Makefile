# The two commands a fresh machine needs are `make demo` and `make test`; both install what they use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Package registries are reached over a network that can drop for a minute: retry, then fail loudly.
retry = for i in 1 2 3 4 5; do $(1) && break; if [ $$i = 5 ]; then exit 1; fi; echo "retrying in $$((i * 10)) s: $(strip $(1))" >&2; sleep $$((i * 10)); done
SYSDEPS := nftables libnftables1 python3-nftables iproute2 openssl prometheus tshark
BENCHDEPS := stunnel4 haproxy
comma := ,
export CARGO_NET_RETRY := 10
export MATURIN_PEP517_ARGS := --profile release

.PHONY: wheelhouse link-nftables benchdeps debian-packages install sysdeps demo test test-rust lint test-python stubtest bench clean

$(PY):
	python3 -m venv --system-site-packages $(VENV)

# A box in a plant is often offline: once a machine has installed zonegate, the wheels it used are kept in
# WHEELHOUSE and later installs (a fresh clone, a rebuilt venv) take them from there without a network.
WHEELHOUSE ?= $(HOME)/.cache/zonegate/wheels
OFFLINE := --no-index --find-links $(WHEELHOUSE)
# Builds run without isolation (no registry fetch per build), so the venv holds what they need: maturin for
# zonegate, setuptools and wheel for test dependencies published only as source (opcua).
BUILDDEPS := 'maturin>=1.7$(comma)<2' 'setuptools>=61' wheel

install: $(PY)
	@$(PIP) install -q $(OFFLINE) $(BUILDDEPS) 2>/dev/null || \
	  $(call retry,$(PIP) install -q --retries 10 $(BUILDDEPS))
	@if $(PIP) install -q $(OFFLINE) --no-build-isolation -e '.[test]' 2>/dev/null; then \
	  echo "installed from the wheelhouse $(WHEELHOUSE)"; \
	else \
	  $(call retry,$(PIP) install -q --retries 10 --no-build-isolation -e '.[test]'); \
	  $(MAKE) --no-print-directory wheelhouse; \
	fi
	@$(MAKE) --no-print-directory link-nftables

# Keep the wheels of what the venv installed (best effort: an install never fails for want of a cache).
wheelhouse: $(PY)
	@mkdir -p $(WHEELHOUSE) && $(PIP) freeze --local --exclude-editable | grep -v '^-e' > $(VENV)/requirements.lock && \
	  $(PIP) download -q --no-deps -d $(WHEELHOUSE) -r $(VENV)/requirements.lock 2>/dev/null || \
	  echo "wheelhouse not refreshed (no network?): $(WHEELHOUSE)" >&2

# Debian's python3-nftables is pure Python over libnftables.so.1; the venv sees only that package.
link-nftables: $(PY)
	@if [ -d /usr/lib/python3/dist-packages/nftables ]; then \
	  mkdir -p $(VENV)/system-nftables && ln -sfn /usr/lib/python3/dist-packages/nftables $(VENV)/system-nftables/nftables && \
	  echo "$(abspath $(VENV))/system-nftables" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zonegate-system-nftables.pth"; \
	fi

sysdeps:
	@$(MAKE) --no-print-directory debian-packages PACKAGES="$(SYSDEPS)"

benchdeps:
	@$(MAKE) --no-print-directory debian-packages PACKAGES="$(BENCHDEPS)"

debian-packages:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    $(call retry,apt-get update -qq); $(call retry,DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing); \
	  else echo "not root: cannot install$$missing" >&2; fi; \
	fi

# The [demo] extra's requirements, installed on their own so zonegate is not rebuilt; the demo runs without
# them (and says what it skipped) if they cannot be installed.
DEMO_EXTRA = $$($(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["demo"])')

demo: install
	@$(PIP) install -q $(OFFLINE) $(DEMO_EXTRA) 2>/dev/null || $(PIP) install -q --retries 10 $(DEMO_EXTRA) || \
	  echo "the [demo] extra did not install: the demo skips its EtherNet/IP part" >&2
	$(VENV)/bin/zonegate demo

test: sysdeps install test-rust lint stubtest test-python

test-rust:
	cd rust_ext && { cargo fetch -q --offline 2>/dev/null || $(call retry,cargo fetch -q); } && cargo test --workspace --release -q

# Lints that find real defects (unchecked casts, held locks, untyped paths) and rustfmt's layout, kept at zero
# so a new one shows.
lint: install
	cd rust_ext && cargo fmt --check && cargo clippy --workspace --tests --release -q -- -D warnings
	$(PY) -m mypy zonegate

stubtest: install
	$(PY) -m mypy.stubtest zonegate._engine --allowlist .ci/stubtest-allowlist

test-python: install
	$(PY) -m pytest -q -p no:cacheprovider

bench: benchdeps install
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_replay.py
	$(PY) benchmarks/bench_relay.py
	$(PY) benchmarks/bench_opcua.py

clean:
	rm -rf $(VENV) rust_ext/target
