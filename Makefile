# The two commands of the README: `make demo` and `make test`. Both run `make setup` first.
PY ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt -c constraints.txt
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	$(VPY) -c "from cream_rt.box_sweep import compile_kernels; compile_kernels(False)"  # numba's cache, once
	@touch $(STAMP)

test: setup
	$(VPY) -m pytest -n 2 -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

demo: setup
	$(VENV)/bin/cream demo --out $(DEMO_DIR)

bench: setup
	$(VPY) -m pip install -q -r requirements-bench.txt -c constraints.txt
	$(VPY) -m pytest bench/tests -q --benchmark-enable -s

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
