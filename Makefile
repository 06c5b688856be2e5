# Quick start: `make demo` (the main job on embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests drive for real (openssl: `openssl cms -verify` of every EF.SOD).
DEBIAN_PACKAGES := openssl

.PHONY: demo test deps system-deps lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

deps: $(STAMP)

# Installs missing Debian packages when run as root (CI); otherwise says what is missing.
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing Debian packages:$$missing (run make test as root, or apt-get install them)"; exit 1; fi; \
	fi

demo: $(STAMP)
	$(BIN)/perso demo --cards 20 --out demo-out

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: system-deps $(STAMP) lint typecheck
	$(BIN)/pytest -q --benchmark-disable

bench: $(STAMP)
	$(BIN)/pytest -q tests/bench --benchmark-only --benchmark-columns=min,median,mean,stddev,rounds

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
