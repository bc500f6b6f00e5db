# Two commands do all the set-up on a fresh machine:
#   make quickstart   # venv + install + the whole mini-world pipeline on CPU (report in runs/quickstart)
#   make test         # venv + install + dev tools + Jupyter kernel + headless Chromium, then the full test suite
#   make test-fast    # venv + install + dev tools (no kernel, no browser), then every test not marked slow
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: install dev quickstart test test-fast bench clean

# On a machine without an NVIDIA driver, torch is pinned to the CPU build first (otherwise pip pulls a
# multi-GB CUDA wheel); with one, the Unsloth extra comes along.
$(BIN)/.installed: pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install -q -e '.[unsloth,gguf]'; \
	else \
	  $(BIN)/pip install -q -r requirements/cpu.txt && $(BIN)/pip install -q --no-deps -e .; \
	fi
	touch $@

$(BIN)/.dev: $(BIN)/.installed requirements/dev.txt requirements/no-deps.txt
	$(BIN)/pip install -q -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -r requirements/no-deps.txt
	touch $@

# Only the slow tests run notebooks (a Jupyter kernel) and drive the demo in a browser (Chromium).
$(BIN)/.slow: $(BIN)/.dev requirements/slow.txt
	$(BIN)/pip install -q -r requirements/slow.txt
	$(BIN)/python -m ipykernel install --user --name python3 >/dev/null
	bash scripts/install_browser.sh
	touch $@

install: $(BIN)/.installed
dev: $(BIN)/.slow

quickstart: $(BIN)/.installed
	$(BIN)/thinkless-lite quickstart --out $(OUT)

test: $(BIN)/.slow
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Slow tests train models end to end or run notebooks, a browser, console scripts or the quickstart. The rest run
# on one worker a core (each test keeps torch to one thread), a test file's tests together on one worker so that
# its module fixtures are built once.
test-fast: $(BIN)/.dev
	$(BIN)/python -m pytest -m "not slow" -n auto --dist loadfile $(PYTEST_ARGS)

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/quickstart_outcome.py

clean:
	rm -rf $(VENV) runs artifacts
