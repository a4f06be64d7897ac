# The two commands: `make run` and `make test`. Every target installs what it
# needs into .venv with the tested pins in constraints.txt.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
PROTO_STAMP := build/.protos
CONFIG ?= examples/gateway.toml

.PHONY: run test test-quick install proto lint bench bench-full clean demo

install: $(STAMP) $(PROTO_STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

proto: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTOS) $(STAMP)
	# One protoc run per package: the harness's copy of the inference proto
	# would otherwise clash with the gateway's in protoc's symbol table.
	for pkg in $$(cd protos && find . -name '*.proto' -printf '%h\n' | sort -u); do \
		$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. \
			$$(find protos/$$pkg -maxdepth 1 -name '*.proto') || exit 1; \
	done
	mkdir -p build && touch $@

run: install
	$(PY) -m gateway serve --config $(CONFIG)

# tritonclient's generated protobuf clashes with ours in one process, so its suite
# (tests/triton) runs in a pytest process of its own.
test: install
	$(PY) -m pytest -q --durations=20 --ignore=tests/triton tests
	$(PY) -m pytest -q tests/triton

test-quick: install
	$(PY) -m pytest -q -x -m "not slow" --ignore=tests/triton tests

lint: install
	$(VENV)/bin/ruff check gateway lifecycle loadtests tests
	$(VENV)/bin/mypy gateway lifecycle loadtests

bench: install
	$(PY) -m loadtests.bench --quick

bench-full: install
	$(PY) -m loadtests.bench --full

clean:
	rm -rf $(VENV) build var gateway/pb/*_pb2*.py loadtests/pb/*_pb2*.py
