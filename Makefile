# fedkube — every entry point a person uses. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install demo test test-prerequisites test-lanes unit integration e2e lint constraints clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --progress-bar off -c constraints.txt -e '.[runtime,operator,plot,dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install fedkube with everything it needs to run and test

demo: install ## run the embedded default: a 3-client federated job on digits, on this machine
	$(VENV)/bin/fedkube run examples/digits.yaml

test: ## run every test: unit, integration (real MinIO), e2e (real Kubernetes), then the container lanes (images, real kubelet) where `make containers-setup` installed their tools
	@$(MAKE) --no-print-directory test-prerequisites
	@status=0; \
	  $(PY) -m pytest --durations=15 $(PYTEST_ARGS) || status=$$?; \
	  $(MAKE) --no-print-directory test-lanes || status=$$((status ? status : 1)); \
	  exit $$status

unit: install ## run the unit tests only (no servers)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: install minio ## run the integration tests (real MinIO)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

e2e: install binaries-optional ## run the end-to-end tests on the real control plane
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: install ## ruff, mypy (strict) and the import-layer contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

constraints: install ## re-pin constraints.txt to what .venv holds now (after changing dependencies)
	@{ sed -n '1,2p' constraints.txt; $(PIP) freeze --exclude-editable | grep -v '^-e'; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

clean: ## remove the virtual environment and local run state
	rm -rf $(VENV) .cluster .fedkube runs .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
