# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test bench bootstrap clean

bootstrap:
	BROWSER=$(BROWSER) VENV=$(VENV) scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m harness.demo

test: BROWSER=1
test: bootstrap
	$(PY) -m pytest $(PYTEST_ARGS)

bench: bootstrap
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
