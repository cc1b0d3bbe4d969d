# The two set-up commands of the README: `make run` (install + the demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of PyTorch that lies on this machine's disk (a plain `torch` may pull a CUDA build of several GB).
TORCH ?= torch==2.13.0

.PHONY: install run test bench clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@# the web page test drives a real chromium; best effort, skipped by the test where absent
	-@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || true
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/dlm demo

test: install
	$(PY) -m pytest

# The quick comparison suite (report.md, report.json and plots in bench/); the scripts in
# benchmarks/ are the longer single-question measurements, run by hand.
bench: install
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(VENV)/bin/dlm bench --suite quick --out bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
