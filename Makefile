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
# each one SparkSession. A single test already keeps both cores 85-95% busy, so the gain is
# small and still to be measured side by side (docs/BENCHMARKS.md, "Test suite").
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check lib tests jobs benchmarks
	$(BIN)/mypy lib

clean:
	rm -rf .lakeward .pytest_cache .mypy_cache .ruff_cache
