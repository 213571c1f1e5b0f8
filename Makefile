# Two commands do all set-up: `make demo` and `make test`. Each creates .venv if missing.
# TORCH_SPEC picks the torch wheel: plain "torch" lets pip choose (CUDA build on Linux);
# CI here passes TORCH_SPEC=torch==2.13.0, the CPU build that lies on disk.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch
PYTEST_ARGS ?=

.PHONY: demo test bench screenshots venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: venv
	$(VENV)/bin/traindeck demo

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: venv
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/overhead.py
	$(PY) bench/checkpoint.py
	$(PY) bench/ddp_overhead.py
	if command -v valgrind >/dev/null; then $(PY) bench/ddp_instructions.py; else echo "bench/ddp_instructions.py skipped: needs valgrind"; fi
	$(PY) bench/control.py
	$(PY) bench/telemetry.py
	$(PY) bench/tui.py

screenshots: venv
	$(PY) -m pip install -q -e ".[screenshots]"
	$(PY) screenshots/make_screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
