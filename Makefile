# Entry points. `make build-image` and `make test` work on a fresh Debian/Ubuntu machine (as root):
# they create the Python environment and start the Docker engine when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VARIANT ?=
PYTEST_ARGS ?=

.PHONY: help venv engine tools registry build-image verify push render lock test unit bench bench-sizes bench-reproducible clean

help:
	@echo "make build-image [VARIANT=runtime]   build, tag and verify an image (default: the manifest's default)"
	@echo "make test                            all tests (unit + integration against the real engine)"
	@echo "make unit                            unit tests only (no engine)"
	@echo "make bench                           benchmarks; results in bench/results/ (build.json: rows per engine and backend)"
	@echo "make bench-sizes                     what each flavor and the workstation additions add; bench/results/build.json"
	@echo "make bench-reproducible [RUNS=10]    double builds from a cleared cache; bench/results/reproducible.json"
	@echo "make push REGISTRY=host:port/ns [VARIANT=…]  push a verified image, pull it back by digest"
	@echo "make render | lock                   regenerate images/ or manifests/locks/"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

engine:
	scripts/start-engine

# mmdebstrap bootstraps the Ubuntu base (Debian/Ubuntu hosts; installed once, as root)
tools:
	@command -v mmdebstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }

build-image: venv engine tools
	$(PY) build.py build $(VARIANT)

registry:
	scripts/start-registry

push: venv engine
	@test -n "$(REGISTRY)" || { echo "make push needs REGISTRY=HOST[:PORT]/NAMESPACE" >&2; exit 2; }
	$(PY) build.py push $(or $(VARIANT),workstation) --registry $(REGISTRY)

verify: venv engine
	$(PY) build.py verify $(or $(VARIANT),workstation)

render: venv
	$(PY) build.py render --all

lock: venv
	$(PY) build.py lock --all

test: venv engine tools
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: venv engine tools
	$(PY) bench/build.py
	$(PY) bench/sizes.py
	$(PY) bench/backends.py

bench-sizes: venv engine tools
	$(PY) bench/sizes.py

# 10 double builds from a cleared cache (about 10 minutes each on 2 cores)
bench-reproducible: venv engine tools
	$(PY) bench/reproducible.py --runs $(or $(RUNS),10)

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
