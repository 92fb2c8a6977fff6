# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
EXTRAS ?= cpu,dashboard,bundled,dev
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONHASHSEED := 0

.PHONY: venv demo test test-long test-fast lint bench gpu-check clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/python -m harness.sweep sweeps/smoke.yaml

test: venv
	bash scripts/ensure_chromium.sh || echo "warning: chromium unavailable; browser test will fail"
	$(VENV)/bin/ruff check funad harness reports tests benchmarks
	$(VENV)/bin/python -m pytest -q -ra --durations=15 -m "not long"

# the soak test and the sweeps that kill workers, nodes and drivers (~9 minutes here); CI runs it after `make test`
test-long: venv
	$(VENV)/bin/python -m pytest -q -ra --durations=10 -m long

test-fast: venv
	$(VENV)/bin/python -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check funad harness reports tests benchmarks

bench: venv
	$(VENV)/bin/python -m benchmarks.run

# one GPU, <= 5 minutes: every figure of the GPU path as one JSON line (benchmarks/RESULTS.md, "GPU check");
# a fresh GPU machine: make gpu-check EXTRAS=gpu,dashboard,bundled,dev (faiss's GPU index)
gpu-check: venv
	$(VENV)/bin/python -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
