# Two commands on a fresh machine:  `make run` (the bot, a worker and an embedded Redis)
# and `make test` (lint, types and the whole test suite; starts its own Redis when none is given).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build lies on CI's disk; on a GPU host use `make run TORCH=torch` (or the docker images).
TORCH ?= torch==2.13.0

.PHONY: install run test lint types unit bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/ponybot up

lint: install
	$(PY) -m ruff check .

types: install
	$(PY) -m mypy

unit: install
	$(PY) -m pytest -q -p no:cacheprovider

test: lint types unit

bench: install
	$(PY) bench/queue_throughput.py
	$(PY) bench/pipeline.py
	$(PY) bench/postprocess.py
	$(PY) bench/interactions.py
	$(PY) bench/gpu.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
