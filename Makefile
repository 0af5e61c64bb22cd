# make demo: set up and start Saffron with the demo scene.
# make test: set up and run every check and test.
# make unit: the unit tests only (tests/unit, seconds).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPICE ?= 127.0.0.1:5900
WEB ?= 127.0.0.1:8080

.PHONY: setup system demo test lint unit bench probe clean

setup: system $(VENV)/.installed

system:
	@bash scripts/setup-system.sh
	@bash scripts/setup-whip-server.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/saffron serve --web $(WEB) --spice $(SPICE)

lint: setup
	$(BIN)/ruff check src/saffron tests
	$(BIN)/ruff format --check src/saffron tests
	$(BIN)/mypy src/saffron
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -ra

unit: setup
	$(BIN)/python -m pytest -ra tests/unit

bench: setup
	$(BIN)/saffron bench --json bench-results/bench.json

probe: setup
	$(BIN)/saffron probe

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
