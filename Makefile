# The two set-up commands of the README: `make run` (install + the demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# The CPU build of PyTorch that lies on this machine's disk (a plain `torch` may pull a CUDA build of several GB).
TORCH ?= torch==2.13.0

.PHONY: install run test bench clean

# What the demo needs: torch and dlm's own dependencies, nothing of the test extras.
$(RUN_STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e .
	@touch $(RUN_STAMP)

# The tests also need the [dev] extras (server, judges, transformers, lm_eval, a browser for the page test).
$(TEST_STAMP): $(RUN_STAMP)
	$(PIP) -e ".[dev]"
	@# the web page test drives a real chromium; best effort, skipped by the test where absent
	-@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || true
	@touch $(TEST_STAMP)

install: $(TEST_STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/dlm demo

test: $(TEST_STAMP)
	$(PY) -m pytest

# The quick comparison suite (report.md, report.json and plots in bench/); the scripts in
# benchmarks/ are the longer single-question measurements, run by hand.
bench: $(RUN_STAMP)
	$(PIP) -e ".[bench]"
	$(VENV)/bin/dlm bench --suite quick --out bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
