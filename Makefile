# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv and install what they need on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Extras the test suite and the demo need; requirements/test.txt locks every package they
# pull in (direct and transitive, with hashes). `make lock` refreshes it: an upgrade is a
# reviewed diff of that file, never an accident of the day. pyproject.toml keeps
# compatible ranges for library users.
TEST_EXTRAS := dev,apps,local-llm,k8s
LOCK   := requirements/test.txt
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.7.0
STAMP  := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml | sha1sum | cut -c1-12)

.PHONY: test test-random lint venv lock demo bench-core docs audit clean

venv: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (SAIR needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "pip==$(PIP_VERSION)"
	# Everything from the lock, hash-checked, nothing resolved. torch is locked to its CPU
	# build (2.13.0+cpu; elsewhere than here pip finds it on PyTorch's CPU wheel index).
	# llama-cpp-python ships no Linux wheels on PyPI: it compiles (~4 min on 2 cores);
	# GGML_NATIVE=OFF keeps the binary portable across the CPUs a venv may be copied to;
	# LLAVA_BUILD=OFF skips its multimodal library (SAIR's policy reads text only).
	# pip byte-compiles what it installs (about a minute here), and that must stay: where
	# PYTHONDONTWRITEBYTECODE is set (as on the CI machines) nothing else would, and every
	# Ray worker would compile Ray, Serve and their imports again (+5 min of `make test`).
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(PIP) install --quiet --require-hashes --no-deps -r $(LOCK)
	# The project itself, built with the locked setuptools, its dependencies already there.
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) check
	rm -f $(VENV)/.installed-*
	touch $@

# Bring the lock in line with pyproject.toml, keeping every pin it can (needs the package
# index); `make lock LOCK_ARGS=--upgrade` takes the newest releases the ranges allow.
# pip-tools lives in its own venv so that it never ends up in the locked one.
LOCK_TOOLS := $(VENV)/lock-tools
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) && \
	  $(LOCK_TOOLS)/bin/python -m pip install --quiet "pip==$(PIP_VERSION)" \
	    "pip-tools==$(PIP_TOOLS_VERSION)"; }
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet $(LOCK_ARGS) \
	  --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links \
	  --no-emit-index-url --extra $(TEST_EXTRAS) -o $(LOCK) pyproject.toml

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q --durations=20

# The suite in shuffled order: modules shuffled, then the tests within each (a new seed
# each run, printed at the top; repeat one with PYTEST_ARGS=--random-order-seed=N).
test-random: $(STAMP)
	$(PY) -m pytest --random-order-bucket=module $(PYTEST_ARGS)

# ruff, then mypy over sair_ray, serve_apps and cuda_tb (config: [tool.mypy] in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

# Dependency vulnerability audit (pip-audit); skips with a warning where no vulnerability
# database is reachable. Reviewed findings: scripts/audit-ignore.txt.
audit: $(STAMP)
	scripts/audit.sh

bench-core: $(STAMP)
	$(PY) benchmarks/bench_core.py

# The live demo: local Ray, image_classification with emulated compute (replicas wait out
# the profile's service times, so scaling out adds capacity on 2 cores) and SAIR attached,
# 5 min of burst load with a live table, then runs/demo/report.html (`sair report`'s page)
# and report.md; everything is shut down at the end. The real-model app: --real-models.
# Options: `.venv/bin/sair demo --help` (e.g. make demo DEMO_ARGS="--policy threshold").
demo: $(STAMP)
	$(VENV)/bin/sair demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
