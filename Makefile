# Every target creates .venv on first use; torch is pinned and installed first so pip never
# resolves an open range to a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,export,serve,tensorboard,mlflow,wandb]'
	touch $(STAMP)

install: $(STAMP)

## demo: train the default model on the built-in corpus for two minutes, then print a sample.
demo: $(STAMP)
	@run=runs/demo-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/charlm train configs/default.yaml train.max_time=120 train.max_steps=null --out $$run && \
	echo "--- a sample from $$run:" && \
	$(BIN)/charlm sample $$run --prime "def " --length 600 --temperature 0.8 --seed 1 && echo

## test: the whole suite (a few minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not distributed"

## bench: the quick benchmarks, a few minutes on a quiet machine (the race: bench/race.py).
CORPUS ?= ../shared/data/tinyshakespeare.txt
bench: $(STAMP)
	$(BIN)/python bench/bench_overhead.py $(CORPUS) --steps 100 --rounds 3
	$(BIN)/python bench/bench_overhead.py $(CORPUS) --interleave 10
	$(BIN)/python bench/bench_sample.py $(CORPUS) --chars 500 --repeats 3
	$(BIN)/python bench/bench_cells.py --steps 5
	$(BIN)/python bench/bench_corpus.py --sizes 10 --repeats 1 --steps 10
	$(BIN)/python bench/bench_precision.py $(CORPUS) --steps 200 --rounds 2
	$(BIN)/python bench/bench_serve.py --corpus $(CORPUS) --seconds 5

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
