# The README's two commands. Each one does all set-up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# worksteal: a worker that runs out of tests takes queued ones from the other (with the default
# scheduler one long test at the end kept a worker busy while the other idled).
PYTEST_ARGS ?= -n 2 --dist worksteal
# timm's own dependencies pull torchvision (and with it a CUDA build of torch): the tests use
# timm's pure-torch layers only, so it is installed without them.
TIMM := timm==1.0.31

.PHONY: test bench lint notebooks clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The test extra is the core plus every extra (train, bench, weights) plus the test tools.
$(VENV)/.installed-test: pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps '$(TIMM)'
	touch $@

$(VENV)/.installed-bench: pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m pip install -q --no-deps '$(TIMM)'
	touch $@

# pytest exits 5 when it collects nothing: for this suite that is a failure, said out loud.
test: $(VENV)/.installed-test
	$(PY) -m ruff check attention_jax benchmarks tests
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The installed command (attention-jax bench); python -m benchmarks is the same from a checkout.
bench: $(VENV)/.installed-bench
	$(VENV)/bin/attention-jax bench $(BENCH_ARGS)

# Re-execute the teaching notebooks in place (they are stored with their outputs).
notebooks: $(VENV)/.installed-test
	$(PY) notebooks/execute.py

lint: $(VENV)/.installed-test
	$(PY) -m ruff check attention_jax benchmarks tests

clean:
	rm -rf $(VENV) *.egg-info build dist .pytest_cache
