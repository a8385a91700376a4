# railgate developer commands. Every target creates the virtual environment on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test setup demo clean bench bench-smoke

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the gateway and simulators on the demo line; DEMO_SECONDS=20 make demo stops by itself
demo: $(STAMP)
	scripts/demo.sh

# every benchmark on loopback (< 15 min on 2 cores): bench/results/latest.json and the table in BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python -m bench.run

# seconds: proves every benchmark still produces numbers (never judges speed)
bench-smoke: $(STAMP)
	$(BIN)/python -m bench.run --smoke

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
