# Quick start: `make demo` (the main job on embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Debian packages the product and its tests use for real:
#   openssl                       `openssl cms -verify` of every EF.SOD
#   pcscd vsmartcard-vpcd         PC/SC daemon and the vpcd virtual readers
#   libpcsclite-dev swig gcc      to build pyscard
#   fonts-ocr-b fonts-wqy-microhei  MRZ (OCR-B) and Chinese glyphs on the card face
#   tesseract-ocr tesseract-ocr-eng  OCR of the printed MRZ in the tests
#   mosquitto                     the MQTT broker the e-cabinet tests start (TLS, ACLs)
#   chromium chromium-driver      headless browser test of the web pages (Selenium)
RUNTIME_PACKAGES := openssl fonts-ocr-b fonts-wqy-microhei
TEST_PACKAGES := $(RUNTIME_PACKAGES) pcscd vsmartcard-vpcd libpcsclite-dev swig gcc \
	tesseract-ocr tesseract-ocr-eng mosquitto chromium chromium-driver

.PHONY: demo test lint typecheck bench clean

# Install missing Debian packages when run as root; otherwise name them ($(1): packages, $(2): required?).
define debian_packages
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  elif [ "$(2)" = required ]; then echo "missing Debian packages:$$missing (run as root or apt-get install them)"; exit 1; \
	  else echo "note: missing Debian packages:$$missing (some features will say so)"; fi; \
	fi
endef

$(STAMP): pyproject.toml
	$(call debian_packages,$(RUNTIME_PACKAGES),optional)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(call debian_packages,$(TEST_PACKAGES),required)
	$(BIN)/pip install --quiet -e '.[test,pcsc]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/perso demo --cards 20 --out demo-out

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

test: $(TEST_STAMP) lint typecheck
	$(BIN)/pytest -q --benchmark-disable

bench: $(TEST_STAMP)
	$(BIN)/pytest -q tests/bench --benchmark-only --benchmark-columns=min,median,mean,stddev,rounds

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
