# Two commands on a fresh machine:  `make run` (the bot, a worker and an embedded Redis)
# and `make test` (lint, types and the whole test suite; starts its own Redis when none is given).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed by this line and pinned nowhere else: the CPU build lies on CI's disk, and on a GPU
# host the same pin takes PyPI's CUDA build (the lock pins the CUDA libraries it needs).
TORCH ?= torch==2.13.0
# Every other package, the installer and the build backend: the exact versions the suite passed with.
LOCK := requirements/lock.txt
# `make lock` refreshes every pin to the newest release; `make lock UPGRADE=` only adds what is new
# in pyproject.toml and keeps the rest.
UPGRADE ?= --upgrade

.PHONY: install browser run test lint types unit bench lock clean docs screenshots nsfwjs-model

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip setuptools
	$(PY) -m pip install -q -c $(LOCK) "$(TORCH)"
	$(PY) -m pip install -q -c $(LOCK) --no-build-isolation -e '.[all,dev]'
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

# The guides (docs/, mkdocs.yml) as a site in site/: strict, so a broken link or a page missing from the nav fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The pictures in docs/images/, taken again by the browser tests: the gallery's pages, and a result as a member
# sees it in Discord (drawn from the message the bot sent to the Discord fake). Commit what changed.
screenshots: install browser
	@fc-list 2>/dev/null | grep -qi emoji || echo "no emoji font: the buttons' emoji draw as boxes (apt-get install fonts-noto-color-emoji)"
	PONYBOT_DOCS_IMAGES=$(CURDIR)/docs/images $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_gallery_browser.py::test_browse_sign_in_search_like_delete \
		tests/test_discord_picture.py::test_a_result_as_a_member_sees_it
	@ls -l docs/images

# Resolve the lock again (uv, against the torch release in requirements/torch.txt), reinstall from it
# and run the whole suite: commit the lock only when this passes.
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in --all-extras --python-version 3.11 \
		--override requirements/torch.txt --no-emit-package torch $(UPGRADE) \
		--custom-compile-command "make lock" --quiet -o $(LOCK)
	$(MAKE) test

# nsfwjs's MobileNetV2 as ONNX (worker/models/), converted from the npm package pinned in tools/nsfwjs/;
# needs node and npm here, never at run time. Commit the .onnx and .json it writes.
nsfwjs-model: install
	cd tools/nsfwjs && npm ci --no-audit --no-fund --ignore-scripts
	$(PY) tools/nsfwjs/convert.py
	cp tools/nsfwjs/node_modules/nsfwjs/LICENSE worker/models/NSFWJS-LICENSE

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
