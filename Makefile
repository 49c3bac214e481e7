# Two commands on a fresh machine:  `make run` (the bot, a worker and an embedded Redis)
# and `make test` (lint, types and the whole test suite; starts its own Redis when none is given).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build lies on CI's disk; on a GPU host use `make run TORCH=torch` (or the docker images).
TORCH ?= torch==2.13.0

.PHONY: install browser run test lint types unit bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

# Headless Chromium for the gallery's browser tests (Debian's packages); tests skip, saying why, without it.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then echo "no apt-get: gallery browser tests will skip"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get install -y -q chromium chromium-driver \
		|| { apt-get update -q && apt-get install -y -q chromium chromium-driver; } \
		|| echo "chromium could not be installed: gallery browser tests will skip"; \
	elif sudo -n true 2>/dev/null; then sudo -n apt-get install -y -q chromium chromium-driver \
		|| { sudo -n apt-get update -q && sudo -n apt-get install -y -q chromium chromium-driver; } \
		|| echo "chromium could not be installed: gallery browser tests will skip"; \
	else echo "not root and no sudo: gallery browser tests will skip (apt-get install chromium chromium-driver)"; fi

run: install
	$(VENV)/bin/ponybot up

lint: install
	$(PY) -m ruff check .

types: install
	$(PY) -m mypy

unit: install browser
	$(PY) -m pytest -q -p no:cacheprovider

test: lint types unit

bench: install
	$(PY) bench/queue_throughput.py
	$(PY) bench/pipeline.py
	$(PY) bench/postprocess.py
	$(PY) bench/interactions.py
	$(PY) bench/overlap.py
	$(PY) bench/deepcache.py
	$(PY) bench/gpu.py
	$(PY) bench/gallery.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
