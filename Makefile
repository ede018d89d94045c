# segstream: `make demo` runs the whole product end to end, `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# OpenCV's headless build comes with segstream itself. Where libGL and glib exist the `gui` extra adds the
# desktop build (the live webcam window); without them only the headless build is installed (same API, no windows).
OPENCV_EXTRA ?= $(shell ldconfig -p 2>/dev/null | grep -q 'libGL.so.1' && ldconfig -p 2>/dev/null | grep -q 'libgthread-2.0.so.0' && echo gui || echo headless)
COMMA := ,
EXTRAS := server$(if $(filter gui,$(OPENCV_EXTRA)),$(COMMA)gui),dev
STAMP := $(VENV)/.installed-$(OPENCV_EXTRA)
PROTO_DIR := protos
PROTO_OUT := $(PROTO_DIR)/segstream/v1

.PHONY: help venv proto check lint typecheck proto-check interop-deps test test-fast soak docs bench-gpu demo clean

help:
	@echo "make demo   - set up, then segment the bundled clip through a local server (writes demo-out/)"
	@echo "make test   - lint, type-check and run the test suite"
	@echo "make check  - ruff, mypy and the generated-code check only"
	@echo "make proto  - regenerate the Python code from protos/"
	@echo "make bench  - CPU benchmark (about two minutes); the last line is its JSON (docs/benchmarks.md)"
	@echo "make soak   - a long soak run (8 streams x 20000 frames per frame policy)"
	@echo "make bench-gpu - on an NVIDIA GPU machine: GPU tests, then CUDA/TensorRT benchmarks"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
# Both OpenCV builds write the same cv2/ files: the desktop build is reinstalled last so that its files are there.
	if [ '$(OPENCV_EXTRA)' = gui ]; then $(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
		"opencv-python==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opencv-python"))')"; fi
	rm -f $(VENV)/.installed-*
	touch $@

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I $(PROTO_DIR) --python_out=$(PROTO_DIR) --pyi_out=$(PROTO_DIR) \
		--grpc_python_out=$(PROTO_DIR) $(PROTO_OUT)/segmentation.proto
	$(BIN)/python scripts/proto_doc.py

# The API reference, docs/api.md, is rendered from the .proto comments.
docs: $(STAMP)
	$(BIN)/python scripts/proto_doc.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy server/segstream client/segstream protos/segstream/wire models/segstream tools/segstream tests scripts examples

proto-check: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/unit/test_proto_generated.py tests/unit/test_docs_generated.py

check: lint typecheck proto-check

# The cross-language client test needs its npm packages (Node.js itself comes from the venv).
interop-deps: tests/interop/node/node_modules/.package-lock.json

tests/interop/node/node_modules/.package-lock.json: tests/interop/node/package-lock.json $(STAMP)
	cd tests/interop/node && PATH="$(abspath $(BIN)):$$PATH" npm ci --no-audit --no-fund --silent

test: check interop-deps
	$(BIN)/pytest -q

test-fast: $(STAMP) interop-deps
	$(BIN)/pytest -q -x

# A longer soak for a person to run: 8 streams x 20000 frames per policy against a server process.
soak: $(STAMP)
	SEGSTREAM_SOAK_FRAMES=20000 $(BIN)/pytest -q -p no:cacheprovider -o timeout=3600 \
		tests/integration/test_server_process.py -k soak

# On a machine with an NVIDIA GPU: installs the CUDA/TensorRT libraries, runs tests/gpu, then the
# CUDA and TensorRT benchmarks (results in build/bench-gpu/results.jsonl).
bench-gpu: $(STAMP)
	./scripts/bench_gpu.sh

demo: $(STAMP)
	./scripts/demo.sh

# The issue's CPU configuration: a model of 30-50 ms per frame (the synthetic FCN-ResNet50 at a 64-pixel
# short side on 2 cores), one stream, four LATEST streams at 30 fps, then four ORDERED streams, whose
# JSON line is the last line printed. docs/benchmarks.md has the figures and how to read them.
BENCH_ARGS ?= --arch resnet50 --cache-dir models/onnx --size 64 --device cpu --iterations 150
.PHONY: bench
bench: $(STAMP)
	$(BIN)/segstream-bench $(BENCH_ARGS) --streams 1 --frames 100 --json
	$(BIN)/segstream-bench $(BENCH_ARGS) --streams 4 --frames 150 --policy latest --rate 30 --json
	$(BIN)/segstream-bench $(BENCH_ARGS) --streams 4 --frames 200 --json

clean:
	rm -rf demo-out .mypy_cache .ruff_cache .pytest_cache
