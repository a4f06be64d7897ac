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

# tritonclient's generated inference messages, the harness's (loadtests/pb) and ours
# (gateway/pb) clash in one process, so tests/triton and tests/loadtests each run in a
# pytest process of their own. The main one runs under a throwaway PostgreSQL
# (scripts/pg-test.sh): the storage contract tests run on SQLite and on PostgreSQL; so
# does tests/loadtests (the two-replica benchmark's test).
SEPARATE_SUITES := --ignore=tests/triton --ignore=tests/loadtests
test: install
	bash scripts/pg-test.sh -- $(PY) -m pytest -q --durations=20 $(SEPARATE_SUITES) tests
	bash scripts/pg-test.sh -- $(PY) -m pytest -q --durations=10 tests/loadtests
	$(PY) -m pytest -q --durations=10 tests/triton

test-quick: install
	GATEWAY_TEST_DATABASES=sqlite $(PY) -m pytest -q -x -m "not slow" $(SEPARATE_SUITES) tests

lint: install
	$(VENV)/bin/ruff check gateway lifecycle loadtests tests
	$(VENV)/bin/mypy gateway lifecycle loadtests

demo: install
	$(PY) -m examples.demo

bench: install
	$(PY) -m loadtests.bench --quick

bench-full: install
	$(PY) -m loadtests.bench --full

clean:
	rm -rf $(VENV) build var gateway/pb/*_pb2*.py loadtests/pb/*_pb2*.py
