PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: deps demo test lint unit bench clean-cache

## Install Debian packages, the Python package and the local control plane (cached).
deps:
	PYTHON=$(PYTHON) bash hack/install-deps.sh

## The whole test suite: lint, types, then every test against the real parts.
test: deps lint
	$(PYTHON) -m pytest -ra $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

## Run eniway on the embedded cloud emulator with a real local control plane.
demo: deps
	$(PYTHON) hack/demo.py

## Print the benchmark figures (CNI ADD/DEL vs ptp+host-local, operator calls, cloud API).
bench: deps
	$(PYTHON) hack/bench_cni.py
	$(PYTHON) hack/bench_operator.py
	$(PYTHON) hack/bench_cloud.py

clean-cache:
	rm -rf $${ENIWAY_CACHE:-$$HOME/.cache/eniway}
