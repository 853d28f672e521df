# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
DEMO_ARGS ?=  # e.g. DEMO_ARGS=--once: run the sample rollout, then stop everything

.PHONY: demo test bench bootstrap clean

bootstrap:
	BROWSER=$(BROWSER) VENV=$(VENV) scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m harness.demo $(DEMO_ARGS)

test: BROWSER=1
test: bootstrap
	$(PY) -m ruff check mschedule_agent mschedule_master harness bench tests scripts
	$(PY) -m pytest $(PYTEST_ARGS)

bench: bootstrap
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
