# streamsnap: make install | run | test | bench
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
CONFIG ?= conf/streamsnap.toml

.PHONY: install run test test-deps lint bench clean

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
	$(BIN)/ruff check src tests bench examples

bench: $(VENV)/.test-installed
	$(PIP) install -e '.[bench]'
	scripts/install-system-deps.sh bench
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
