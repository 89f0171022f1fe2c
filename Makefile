# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv and install what they need on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Extras the test suite needs. torch comes pinned through the `apps` extra.
TEST_EXTRAS ?= dev,apps,local-llm,k8s
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)-$(subst $(comma),_,$(TEST_EXTRAS))
comma  := ,

.PHONY: test lint venv demo bench-core docs audit clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (SAIR needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: anything unpinned would pull the CUDA build.
	$(PIP) install --quiet "torch==2.13.0"
	# llama-cpp-python ships no Linux wheels on PyPI: it compiles (~4 min on 2 cores).
	# GGML_NATIVE=OFF keeps the binary portable across the CPUs a venv may be copied to.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(PIP) install --quiet -e ".[$(TEST_EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

# Dependency vulnerability audit (pip-audit); skips with a warning where no vulnerability
# database is reachable. Reviewed findings: scripts/audit-ignore.txt.
audit: $(STAMP)
	scripts/audit.sh

bench-core: $(STAMP)
	$(PY) benchmarks/bench_core.py

# The live demo: local Ray, image_classification with SAIR attached, 3 min of burst load
# with a live table, then runs/demo/report.html (`sair report`'s page) and report.md;
# everything is shut down at the end.
# Options: `.venv/bin/sair demo --help` (e.g. make demo DEMO_ARGS="--policy threshold").
demo: $(STAMP)
	$(VENV)/bin/sair demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
