# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
# -n 4 --dist loadscope: 4 pytest-xdist workers, each module whole on one worker (its module-scoped
# fleet started once), in collection order (slow modules first: tests/conftest.py), not xdist's
# most-tests-first. The suite mostly waits (outages, cuts, the next cron minute): ~3 of its
# ~15 serial minutes are CPU, so 4 workers on 2 cores overlap the waits. PYTEST_ARGS=... for serial.
PYTEST_ARGS ?= -n 4 --dist loadscope --no-loadscope-reorder --durations=25  # the slowest tests, printed at the end: the suite's time is watched
DEMO_ARGS ?=  # e.g. DEMO_ARGS=--once: run the sample rollout, then stop everything

.PHONY: demo test fuzz bench bootstrap clean

bootstrap:
	BROWSER=$(BROWSER) VENV=$(VENV) scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m harness.demo $(DEMO_ARGS)

test: BROWSER=1
test: bootstrap
	$(PY) -m ruff check mschedule_agent mschedule_master harness bench tests scripts
	$(PY) -m mypy mschedule_agent mschedule_master  # --strict: [tool.mypy] in pyproject.toml
	$(PY) -m pytest $(PYTEST_ARGS)

# The API contract run of `make test` (tests/ui/test_api_contract.py), with more cases per
# operation: minutes, for occasional use. FUZZ_EXAMPLES=N and FUZZ_SEED=N change it.
FUZZ_EXAMPLES ?= 100
FUZZ_SEED ?= 21
fuzz: bootstrap
	MSCHEDULE_CONTRACT_EXAMPLES=$(FUZZ_EXAMPLES) MSCHEDULE_CONTRACT_SEED=$(FUZZ_SEED) \
		$(PY) -m pytest -p no:cacheprovider -s --timeout 3600 tests/ui/test_api_contract.py -k schemathesis

bench: bootstrap
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build *.egg-info
