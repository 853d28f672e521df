#!/usr/bin/env bash
# `pip install -q ARGS...` into the virtualenv whose python is PYTHON, as `make bootstrap` runs
# it: without build-tool warning boxes in `make demo`/`make test` output (issue 11).
#   scripts/pip-install-quiet.sh PYTHON ARGS...
# setuptools' editable build prints a boxed notice (a UserWarning) on every install: noise,
# never an error (bootstrap's import check still catches a failed install). pip's own
# "WARNING: Location" lines about its configured indexes are dropped too.
# tests/test_packaging.py runs this script on a scratch virtualenv and fails if a box comes back.
set -uo pipefail
python=$1
shift
PYTHONWARNINGS=ignore::UserWarning "$python" -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true
