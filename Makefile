# streamsnap: make install | run | test | bench | bench-cameras | bench-endurance | dist
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
CONFIG ?= conf/streamsnap.toml

.PHONY: install run test test-deps lint bench bench-cameras bench-endurance dist clean

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install -e .
	touch $@

# The Flashphoner WebSDK for the web pages (npm; never committed)
node_modules/.installed: package.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --no-audit --no-fund --ignore-scripts --loglevel=error && touch $@; \
	else echo "npm not found: the web pages need the Flashphoner WebSDK (npm install)" >&2; fi

run: install
	$(BIN)/streamsnap serve --config $(CONFIG)

$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) install -e '.[test]'
	touch $@

test-deps: $(VENV)/.test-installed node_modules/.installed
	scripts/install-system-deps.sh test

test: test-deps
	$(BIN)/python -m pytest -q

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench examples build_support

bench: $(VENV)/.test-installed
	$(PIP) install -e '.[bench]'
	scripts/install-system-deps.sh bench
	$(BIN)/python bench/run.py

# 720p RTSP cameras held, fed by a camera simulator that does not encode, against the FFmpeg
# command line and OpenCV on the same cameras (bench/cameras.py; bench/out/cameras.md)
bench-cameras: $(VENV)/.test-installed
	$(PIP) install -e '.[bench]'
	$(BIN)/python bench/cameras.py

# an hour with 40 streams, auto snapshots and 20 REST snapshots a second: RSS, fds, threads
# and p99 over time (bench/endurance.py; results in bench/out/, plot in bench/endurance.png)
bench-endurance: $(VENV)/.test-installed
	$(PIP) install -e '.[bench]'
	$(BIN)/python bench/endurance.py --minutes 60

# sdist and wheel into dist/; the build backend (build_support/) puts the WebSDK's flashphoner.js
# into both (from node_modules or the npm registry); the wheel is built from the sdist
dist: $(VENV)/.installed
	$(PIP) install build
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache src/streamsnap/web/sdk
