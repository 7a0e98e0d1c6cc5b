# Two commands on a fresh machine (Python 3.11, Java 17, Maven):
#   make demo   create .venv, install lakeward, run the demo pipeline
#   make test   create .venv if needed, run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lakeward demo

# Two worker processes, a test module each at a time (module fixtures build their data once),
# each one SparkSession. A single test keeps both cores 85-95% busy, yet on one machine two
# workers ran the suite in 42 minutes, and one had run a quarter of it after 34 (docs/BENCHMARKS.md);
# on a quiet machine two workers take about 30 minutes (471 tests, "Test suite" in docs/BENCHMARKS.md).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check lib tests jobs benchmarks
	$(BIN)/mypy lib

clean:
	rm -rf .lakeward .pytest_cache .mypy_cache .ruff_cache build dist
