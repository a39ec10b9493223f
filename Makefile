# Quickstart: `make install`, `make test`, `make demo`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The CPU machines this project is developed on keep torch 2.14.1 / torchvision 0.29.1 on disk, and pip takes them
# from there; the gpu extra (vLLM) pins torch 2.13.0, which the project's ranges also admit.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install system-deps test test-fast lint demo mutation clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH_PINS)
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: system-deps $(BIN)/.installed

# Headless Chromium renders the leaderboard page in the tests. Installed from Debian when we are root and it is missing.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "warning: chromium not found; install Debian's 'chromium' package for the leaderboard browser test"; fi; }

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml); not part of `make test`. Resumable: a
# second run only re-checks mutants whose code or tests changed. Prints the score per module (target >= 85%).
MUTATION_JOBS ?= 2
mutation: install
	$(BIN)/pip install -q -e ".[dev,mutation]"
	LAION_SG_TINY_MODELS=$(CURDIR)/.mutation_models HYPOTHESIS_PROFILE=mutation $(BIN)/mutmut run --max-children $(MUTATION_JOBS) > mutation.log 2>&1 || true
	$(BIN)/python tests/mutation_report.py

demo: install
	$(BIN)/laion-sg demo --output demo_out

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache mutants .mutation_models
