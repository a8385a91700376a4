# railgate developer commands. Every target creates the virtual environment on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test setup demo clean bench bench-smoke fuzz

$(STAMP): pyproject.toml setup.py codecs/_core.pyx codecs/_train_state.pxi codecs/_train_batch.pxi codecs/include/icd_hash.h gateway/net/_udp_batch.pyx gateway/net/_reactor.pyx gateway/net/_timers.pyx
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

# every benchmark on loopback (about 15-18 min on 2 cores: 887 and 1,003 s in the runs at 4959859 and 2d7b173): bench/results/latest.json and the table in BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python -m bench.run

# seconds: proves every benchmark still produces numbers (never judges speed)
bench-smoke: $(STAMP)
	$(BIN)/python -m bench.run --smoke

# coverage-guided fuzzing of the codecs: make fuzz TARGET=stream|datagram|receiver MINUTES=5 (default stream, 5);
# make fuzz TARGET=differential: a million frames through the compiled and the pure path, compared
fuzz: $(STAMP)
	if [ "$(TARGET)" = differential ]; then \
	  $(BIN)/python -m tests.fuzz.differential --frames 1000000; \
	else \
	  { $(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/pip install --quiet -e ".[fuzz]"; } && \
	  $(BIN)/python -m tests.fuzz.fuzz_codecs --target $(or $(TARGET),stream) --minutes $(or $(MINUTES),5); \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
