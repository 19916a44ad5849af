# Every target runs in the project's virtual environment (.venv), created from
# $(PYTHON) by `make deps`: Debian's own python3 refuses pip installs outside one.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps demo test lint unit bench clean-cache

## Install Debian packages, the virtual environment with the package, and the local control plane (cached).
deps:
	PYTHON=$(PYTHON) VENV=$(VENV) bash hack/install-deps.sh

## The whole test suite: lint, types, then every test against the real parts.
test: deps lint
	$(VPY) -m pytest -ra --durations=30 $(PYTEST_ARGS)

lint:
	$(VPY) -m ruff check .
	$(VPY) -m mypy

## Run eniway on the embedded cloud emulator with a real local control plane
## (CLOUD=aws: on its EC2 API, through boto3 and IMDSv2; CHART=1: installed by helm
## install from the chart, its image built offline).
demo: deps
	$(VPY) hack/demo.py $(if $(CLOUD),--cloud $(CLOUD)) $(if $(CHART),--chart)

## Print the benchmark figures (CNI ADD/DEL and pod startup on real nodes vs ptp+host-local,
## operator calls, warm-pool latency against idle IPs, agent watch traffic, cloud API).
bench: deps
	$(VPY) hack/bench_cni.py
	$(VPY) hack/bench_nodes.py
	$(VPY) hack/bench_operator.py
	$(VPY) hack/bench_tradeoff.py
	$(VPY) hack/bench_watch.py
	$(VPY) hack/bench_cloud.py

clean-cache:
	rm -rf $${ENIWAY_CACHE:-$$HOME/.cache/eniway}
