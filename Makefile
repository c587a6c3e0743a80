# kpflow: every target sets itself up on a fresh machine (a .venv beside this file).
#
#   make test     the test suite (creates .venv and installs kpflow[dev,torch,call,tfds] on first use)
#   make e2e      the browser test of the call's viewer (tests/e2e; installs Debian's chromium if missing)
#   make demo     generated videos -> tiny FOMM -> keypoints -> VRNN, GRU-NF -> keypoint and video evaluation (demo_out/)
#   make bench    forecaster sampling, FOMM, pipeline, real-time protocol, call and input pipeline speed (runs/bench_*.json)
#   make lint     ruff
#   make lock     refresh constraints.txt (the versions make installs) from a fresh, unpinned install
#   make torch    the optional PyTorch extra (checkpoint conversion, parity tests)
#   make clean    caches and demo output (keeps .venv and runs/); make distclean also drops .venv

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Re-install when pyproject.toml or constraints.txt changes; otherwise repeat runs skip pip entirely.
STAMP := $(VENV)/.installed
# Versions known to pass here; `make lock` rewrites it.
CONSTRAINTS := constraints.txt
# The extras every target installs (make test runs their tests).
EXTRAS ?= dev,torch,call,tfds
# Tests run in TEST_WORKERS pytest-xdist processes (a test file stays in one process, so its
# module fixtures are built once); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
# Extra pytest arguments, e.g. make test PYTEST_ARGS="-m 'not slow'" or PYTEST_ARGS="-k pipeline".
PYTEST_ARGS ?=
# The CPU wheel of torch available on these machines; an unpinned torch pulls gigabytes of CUDA packages.
TORCH_VERSION ?= 2.13.0

.PHONY: help setup test test-fast e2e demo bench lint lock torch clean distclean

help:
	@sed -n '3,11p' Makefile | sed 's/^# //'

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch (the CPU wheel, pinned, first) so that the FOMM conversion and parity tests run too.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PY) -m pip install -c $(CONSTRAINTS) "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

setup: $(STAMP)

# tests/e2e (a real browser) is make e2e's.
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --ignore=tests/e2e $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --ignore=tests/e2e -m "not slow" $(PYTEST_ARGS)

# Headless Chromium opens the call's viewer page (tests/e2e). Debian's chromium is installed first
# when none is on PATH; without a browser the test skips, or fails where CI is set.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
e2e: $(STAMP)
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	$(PY) -m pytest -q -n 0 tests/e2e $(PYTEST_ARGS)

demo: $(STAMP)
	PY=$(PY) bash scripts/demo.sh

bench: $(STAMP)
	$(PY) -m eval.bench forecast --dtypes float32,bfloat16 --torch_reference --out runs/bench_forecast.json
	$(PY) -m eval.bench fomm --out runs/bench_fomm.json
	$(PY) -m eval.bench pipeline --samples 10 --out runs/bench_pipeline.json
	$(PY) -m eval.bench realtime --repeats 3 --out runs/bench_realtime.json
	$(PY) -m eval.bench call --out runs/bench_call.json
	$(PY) -m eval.bench data --frame_size 64 --out runs/bench_data.json

lint: $(STAMP)
	$(VENV)/bin/ruff check kpflow train eval configs tests notebooks

# torch first, pinned, so that pip sees it satisfied when resolving the extra.
torch: $(STAMP)
	$(PY) -m pip install -c $(CONSTRAINTS) "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -c $(CONSTRAINTS) -e ".[torch]"

# A fresh venv with the newest versions pip finds for the same extras, frozen into constraints.txt.
# Run make test afterwards and commit constraints.txt only when it passes.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	{ sed -n '1,2p' $(CONSTRAINTS); $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | sed 's/^torch==$(TORCH_VERSION)+cpu$$/torch==$(TORCH_VERSION)/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf demo_out .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
