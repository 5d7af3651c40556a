# Quickstart: `make run` (set up .venv, build, run the main job) and `make test` (set up, build,
# native tests + the pytest suite). Everything CI needs is installed from here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JOBS ?= $(shell nproc)
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
# pip's CUDA headers (cusparse.h, ...) complete a system toolkit that lacks them.
CU13_INC = $(wildcard $(VENV)/lib/python3*/site-packages/nvidia/cu13/include)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export CUDA_HOME
export MAX_JOBS := $(JOBS)
export CPATH := $(if $(CU13_INC),$(abspath $(CU13_INC)):,)$(CPATH)

.PHONY: all setup build peers native native-asan test test-py run bench info gpu-check gpu-check-models clean

all: build

$(VENV)/.stamp: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel >/dev/null
	$(PY) -m pip install -r requirements.txt
	touch $@

setup: $(VENV)/.stamp

build: setup
	$(PY) setup.py build_ext --inplace

# Kernels without Python: static library, ctest unit tests, nvcc compile check of every .cu file.
native:
	cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/native -j $(JOBS)
	cd build/native && ctest --output-on-failure

native-asan:
	cmake -S . -B build/native-asan -DCMAKE_BUILD_TYPE=Debug -DFASTCONV_SANITIZE=ON -DFASTCONV_CUDA_CHECK=OFF >/dev/null
	cmake --build build/native-asan -j $(JOBS)
	cd build/native-asan && ctest --output-on-failure

test-py: build
	$(PY) -m pytest -q tests

test: build native native-asan test-py

# The inference peers (ONNX Runtime, OpenVINO) for the main job's and the benchmarks' comparisons;
# optional: without a package index they are skipped with a note.
peers: setup
	$(PY) -m pip install -q -r benchmarks/requirements-peers.txt || echo "fastconv: inference peers not installed; their rows are skipped"

run: build peers
	$(PY) -m fastconv demo

# The layer suite against torch, then whole networks against ONNX Runtime, OpenVINO and torch.compile
# with freezing (the optional peers are installed here, not by setup or test).
bench: build peers
	$(PY) -m fastconv bench
	$(PY) -m fastconv bench --ops peers

info: build
	$(PY) -m fastconv info

# On the lent GPU machine (system python with torch+CUDA): build, check, time; table printed last.
gpu-check:
	bash benchmarks/gpu_check.sh

# The second call on the GPU machine (while it is warm the build is incremental): whole nets against
# torch.compile, SORT's cost, the numba.cuda kernels against the native ones, randomized cross-checks
# of every op in every CUDA dtype (python -m fastconv check), racecheck.
gpu-check-models:
	FASTCONV_GPU_PARTS=build,models,numba,check,racecheck bash benchmarks/gpu_check.sh

clean:
	rm -rf build fastconv/_C*.so
