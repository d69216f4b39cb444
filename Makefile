# imbalens: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# tcmalloc for CPU training (benchmarks/speed.py); `make install` installs it
# when it can (root + apt) and says once when it cannot. Looked up when a command runs,
# so a `make test` that installs first also gets it.
TCMALLOC_GLOB := /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4
# glibc malloc tunables: the fallback where tcmalloc is absent (make bench measured
# 1.35x over plain glibc, tcmalloc 1.41x, T-DenseNet 64 px on an AVX2 2-core CPU);
# ignored when tcmalloc is preloaded
GLIBC_TUNABLES := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=268435456
RUN := LD_PRELOAD=$$(ls $(TCMALLOC_GLOB) 2>/dev/null | head -n 1) $(GLIBC_TUNABLES) MPLBACKEND=Agg
GRID ?= params/quick.yaml
# runs folder of `make study` / `make book` (the grid writes <RUNS>/<grid name>/)
RUNS ?= runs
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test lint format study study-real gpu-study book bench bench-data cuda-check clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[test,dask]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@if ls $(TCMALLOC_GLOB) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "install: libtcmalloc-minimal4 (the CPU allocator make bench measures) with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; } || \
	  echo "install: apt-get could not install libtcmalloc-minimal4; CPU training runs on glibc malloc (compare with make bench)"; \
	else echo "install: tcmalloc not found (not root, or no apt-get): CPU training runs on glibc malloc; to add it: apt-get install libtcmalloc-minimal4"; fi
	touch $@

install: $(STAMP) ## make .venv (python3 -m venv + pip install -e .[test,dask])

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check src tests book benchmarks
	$(BIN)/ruff format --check src tests book benchmarks

format: $(STAMP) ## ruff format and fix
	$(BIN)/ruff format src tests book benchmarks
	$(BIN)/ruff check --fix src tests book benchmarks

test: $(STAMP) lint ## lint + the whole test suite (smoke grid, nbval, book build, chromium check)
	$(RUN) PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest $(PYTEST_ARGS)

study: $(STAMP) ## the whole study on the phantom: data, grid params/quick.yaml, the book
	@# the grid makes the phantom when absent, resumes where it stopped, and exits non-zero
	@# when a run failed; the book is built from whatever ran, then the grid's status wins
	@start=$$(date +%s); \
	$(RUN) PATH=$(abspath $(BIN)):$$PATH $(BIN)/imbalens grid $(GRID) --out $(RUNS) $(GRID_ARGS); status=$$?; \
	$(RUN) PATH=$(abspath $(BIN)):$$PATH $(BIN)/imbalens book $(GRID) --runs $(RUNS) || exit 1; \
	echo "study: $(GRID) in $$(( $$(date +%s) - start )) s (grid exit status $$status)"; \
	exit $$status

study-real: ## the same study and verdict table on real radiographs (params/nih-mini.yaml)
	$(MAKE) study GRID=params/nih-mini.yaml

gpu-study: $(STAMP) ## on a CUDA machine: the phantom study at 224 px, 3 seeds (params/phantom-gpu.yaml)
	@$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-study: no CUDA GPU visible (torch.cuda.is_available() is False); on a CPU use make study')"
	$(MAKE) study GRID=params/phantom-gpu.yaml

book: $(STAMP) ## rebuild the book from the runs already executed
	$(RUN) PATH=$(abspath $(BIN)):$$PATH $(BIN)/imbalens book $(GRID) --runs $(RUNS)

bench: $(STAMP) ## CPU speed benchmark (fp32 vs bf16+channels_last, side by side)
	$(RUN) $(BIN)/python benchmarks/speed.py

bench-data: $(STAMP) ## data-loading speed: 1,024 px PNGs vs the prepared cache (workers 1/2)
	$(RUN) $(BIN)/python benchmarks/cache_speed.py

cuda-check: $(STAMP) ## on a GPU machine: CUDA tests, AMP/fp16/NCCL/resume runs, GPU speed
	PY=$(BIN)/python bash benchmarks/cuda_check.sh

CLEAN := runs _build book/_build .pytest_cache .ruff_cache
clean: ## remove runs, built book and caches (keeps .venv and data); says what it removes
	@for p in $(CLEAN); do if [ -e "$$p" ]; then echo "removing $$p ($$(du -sh "$$p" | cut -f1))"; rm -rf "$$p"; fi; done
