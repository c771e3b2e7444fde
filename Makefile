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

# every test, the slow ones too (CI); a plain `pytest` (make test-fast) leaves the slow ones out
test: $(STAMP)
	$(PY) -m pytest -m "slow or not slow"

test-fast: $(STAMP)
	$(PY) -m pytest

DISTILL := $(VENV)/bin/distill

# The demo ends with the loop: replay asks the packaged local Qwen2.5-Coder-0.5B (embedded llama.cpp
# when no Ollama runs), the deterministic gate checks the answer, a failed answer escalates to the
# packaged 1.5B, the run is logged to _kb/replay_runs.jsonl, and a last `distill run` collects it as
# evidence. Exit 1 from replay (no gate-passing answer even after escalation) fails the demo.
DEMO_TASK ?= Review services/ingest/src/batcher.rs for defects: give severity, a patch and the steps that verify the fix.

demo: $(STAMP)
	rm -rf $(DEMO_ROOT)
	$(DISTILL) init $(DEMO_ROOT) --sample
	$(DISTILL) collect --root $(DEMO_ROOT)
	$(DISTILL) score --root $(DEMO_ROOT)
	$(DISTILL) export all --root $(DEMO_ROOT)
	$(DISTILL) run --root $(DEMO_ROOT)
	$(VENV)/bin/replay --root $(DEMO_ROOT) --allow-escalation --task "$(DEMO_TASK)"
	$(DISTILL) run --root $(DEMO_ROOT)
	@echo "replay runs collected as evidence: $$(cat $(DEMO_ROOT)/evidence/*/*/*/replay_runs.jsonl | wc -l)"
	@echo "run summary: $$(ls -d $(DEMO_ROOT)/reports/*/summary.md | tail -n 1)"

clean:
	rm -rf $(VENV) $(DEMO_ROOT) .pytest_cache
