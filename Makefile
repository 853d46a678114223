# Two commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format clean chromium

# torch is installed first and pinned: `pip install torch==2.13.0` takes the local CPU wheel, whereas an
# unpinned torch pulled in as a dependency could fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# pellucid's native CPU kernels (g++, ~20 s once per machine) now, so the first answer does not wait for them
	$(BIN)/python -c "from pellucid.quant import native; native.available()"
	touch $(STAMP)

# One chat answer from the default model, greedy so it is the same every time.
demo: $(STAMP)
	$(BIN)/pellucid pull smollm2-135m
	$(BIN)/pellucid run smollm2-135m "What is the capital of France? Answer in one sentence." --temperature 0

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The chat page test drives Debian's chromium (never a downloaded browser): installed here when we run as
# root; otherwise, or if apt cannot, that one test skips and says why.
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; } \
		|| echo "warning: could not install chromium; the web page test will skip"

# pytest exits 5 when it collects no tests; make treats that as a failure, as it should.
test: lint chromium
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
