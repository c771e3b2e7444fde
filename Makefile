# `make demo` and `make test` each set up .venv (torch CPU wheel first), then run.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEMO_ROOT ?= demo-workspace

.PHONY: install test test-fast demo clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first: any other torch version pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

DISTILL := $(VENV)/bin/distill

# The replay at the end uses the embedded GGUF backend when no Ollama is running; the smaller
# context/output budget keeps it inside the timeout on 2 CPU cores. Exit 1 from replay means
# the deterministic gate refused the answer (shown in the gate table), which the demo accepts.
DEMO_TASK ?= Review services/ingest/src/batcher.rs for defects: give severity, a patch and the steps that verify the fix.

demo: $(STAMP)
	rm -rf $(DEMO_ROOT)
	$(DISTILL) init $(DEMO_ROOT) --sample
	$(DISTILL) collect --root $(DEMO_ROOT)
	$(DISTILL) score --root $(DEMO_ROOT)
	$(DISTILL) export all --root $(DEMO_ROOT)
	$(DISTILL) run --root $(DEMO_ROOT)
	DISTILL_RUNTIME__MAX_TOKENS=128 DISTILL_RUNTIME__NUM_CTX=2048 \
	  $(VENV)/bin/replay --root $(DEMO_ROOT) --local-only --task "$(DEMO_TASK)"; rc=$$?; [ $$rc -le 1 ]
	@echo "run summary: $$(ls -d $(DEMO_ROOT)/reports/*/summary.md | tail -n 1)"

clean:
	rm -rf $(VENV) $(DEMO_ROOT) .pytest_cache
