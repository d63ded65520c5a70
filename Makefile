# The two set-up commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0 is the CPU wheel on this machine's disk; an already installed torch is kept.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-test demo test lint

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade "pip>=23" "setuptools>=68" wheel ninja

install: $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install --no-build-isolation -e .

install-test: $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install --no-build-isolation -e ".[test,cluster,logging]"

demo: install
	$(PY) -m pipelines.demo

test: install-test
	$(PY) -m pytest -n 2 tests

lint: $(PY)
	$(PIP) install ruff
	$(VENV)/bin/ruff check nr slicefixer pipelines data_curation tests
