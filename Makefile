# Two commands for a fresh machine with Python 3.11: `make run` and `make test`.
# Both create .venv on first use. CPU wheel by default; CUDA users: make TORCH="torch" run
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test bench seed-table format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $@

run: $(BIN)/.installed  ## the default experiment (extra Hydra overrides: make run ARGS="client.batch_size=8")
	$(BIN)/python -m fedbatch.simulate $(ARGS)

test: $(BIN)/.installed  ## lint, format check and the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# Two pytest-xdist workers (one on a one-core machine): much of the end-to-end tests'
	# time is waiting on subprocesses and timeouts, which the other worker fills.
	$(BIN)/python -m pytest -q -n auto --maxprocesses 2; code=$$?; [ $$code -eq 5 ] && echo "no tests collected" && code=0; exit $$code

bench: $(BIN)/.installed  ## performance benchmark against a plain loop, Ray, vanilla Flower, pfl-research
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev,bench]"
	$(BIN)/python -m fedbatch.bench --case small --case pfl --case scale $(ARGS)

seed-table: $(BIN)/.installed  ## the seed's batch-size table, measured on this machine (~20 min)
	sweep=multirun/seed_table/$$(date +%Y-%m-%d_%H-%M-%S) && \
	$(BIN)/python -m fedbatch.simulate --config-dir simulations/seed_table --config-name study \
		-m hydra/launcher=parallel hydra.sweep.dir=$$sweep && \
	$(BIN)/python -m fedbatch.report.seed_table $$sweep --out simulations/seed_table

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
