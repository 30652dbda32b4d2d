# certop: `make demo`, `make test`, `make bench`. Each installs what it needs and is safe to
# run twice: Debian packages when missing, a .venv with the project and its test tools.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
PYTEST_ARGS ?=

.PHONY: demo test lint bench image wheels deps-debian deps-bench deps-image deps-sslyze venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's pebble ships `pebble` and `pebble-challtestsrv`; curl is used by the demo;
# kubectl applies manifests/ to the Kubernetes emulator in one test; bind9 (named) and
# dnsutils (dig, nsupdate) are the DNS servers and tools of the DNS-01 tests.
deps-debian:
	@if ! command -v pebble >/dev/null || ! command -v pebble-challtestsrv >/dev/null \
	    || ! command -v curl >/dev/null || ! command -v kubectl >/dev/null \
	    || ! test -x /usr/sbin/named || ! command -v dig >/dev/null; then \
	  echo "installing Debian packages: pebble curl kubectl bind9 dnsutils"; \
	  $(APT) update -qq && $(APT) install -y -qq pebble curl kubectl bind9 dnsutils >/dev/null; \
	fi

demo: venv deps-debian
	$(BIN)/python examples/demo.py

lint: venv
	$(BIN)/ruff check certop solvers tests pebble examples bench image
	$(BIN)/mypy
	$(BIN)/mypy --strict image
	$(BIN)/lint-imports

# sslyze (the TLS scanner tests/proxy/test_tls_clients.py runs) pins cryptography<47: it
# gets a venv of its own, like certbot below.
SSLYZE_VENV := .venv-sslyze
deps-sslyze:
	@[ -x $(SSLYZE_VENV)/bin/sslyze ] || { $(PYTHON) -m venv $(SSLYZE_VENV) && \
	  $(SSLYZE_VENV)/bin/pip install --quiet --disable-pip-version-check sslyze==6.3.1; }

test: lint deps-debian deps-sslyze deps-image
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The container image (image/build.py): a bookworm root filesystem from Debian's archive by
# mmdebstrap, certop's wheels (strip(1) from binutils trims their shared objects), an OCI archive
# under dist/ loaded into podman (runc runs it; the tests run it too; uidmap lets a user who is
# not root build and run it; skopeo and containerd read the archive as Docker, kind and k3s do).
IMAGE_DEBS := mmdebstrap binutils podman runc uidmap skopeo containerd
deps-image:
	@if ! command -v mmdebstrap >/dev/null || ! command -v strip >/dev/null \
	    || ! command -v podman >/dev/null || ! command -v runc >/dev/null \
	    || ! command -v newuidmap >/dev/null || ! command -v skopeo >/dev/null \
	    || ! command -v containerd >/dev/null; then \
	  echo "installing Debian packages: $(IMAGE_DEBS)"; \
	  $(APT) update -qq && $(APT) install -y -qq $(IMAGE_DEBS) >/dev/null; \
	fi

IMAGE_ARGS ?=
image: venv deps-image
	$(BIN)/python image/build.py $(IMAGE_ARGS)

# dist/wheels alone: what the Containerfile installs (`make wheels && podman build .`).
wheels: venv
	$(BIN)/python image/build.py --wheels-only

CERTBOT_VENV := bench/.venv-certbot

# Peers for the side-by-side benchmarks: lego, Caddy, nginx, HAProxy, wrk and h2load from
# Debian, certbot from PyPI in a venv of its own (it pins its own `acme`); valgrind counts the
# proxy's instructions per request.
BENCH_DEBS := lego caddy nginx-light haproxy wrk nghttp2-client valgrind
deps-bench: deps-debian
	@if ! command -v lego >/dev/null || ! command -v caddy >/dev/null \
	    || ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null \
	    || ! command -v wrk >/dev/null || ! command -v h2load >/dev/null \
	    || ! command -v valgrind >/dev/null; then \
	  echo "installing Debian packages: $(BENCH_DEBS)"; \
	  $(APT) update -qq && $(APT) install -y -qq $(BENCH_DEBS) >/dev/null; \
	fi
	@[ -x $(CERTBOT_VENV)/bin/certbot ] || { $(PYTHON) -m venv $(CERTBOT_VENV) && \
	  $(CERTBOT_VENV)/bin/pip install --quiet --disable-pip-version-check certbot==5.8.0; }

bench: venv deps-bench
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SSLYZE_VENV) .mypy_cache .pytest_cache .ruff_cache dist
