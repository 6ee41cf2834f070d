# The README's two commands: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test lint format bench bench-scale clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# compat mode: the project root goes on sys.path, so new packages import without a reinstall
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bmsctl demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The dashboard's browser tests drive Debian's chromium through Playwright (never a downloaded
# browser). As root (CI), it is installed from the distribution when missing.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

test: lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# On demand, never in `make test`: figures go to bench/RESULTS.md with the command and machine.
bench: $(STAMP)
	$(BIN)/python bench/bench_simulator.py --requests 20000 --threads 8
	$(BIN)/python -m bench.bench_limiter --servers 500

# Every row of issue 11's table, three runs each, on PostgreSQL (TEST_DATABASE_URL, or
# postgres@127.0.0.1:5432/test), the goal beside each; about 90 min on 2 idle cores (the 10,000
# makespan is 45 of them). BENCH_ARGS picks rows or sizes: BENCH_ARGS="--quick --runs 1" is a
# smoke run of every row (~10 min), BENCH_ARGS="--skip-rows makespan" leaves the longest out.
bench-scale: $(STAMP)
	$(BIN)/python -m bench.bench_scale --runs 3 $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
