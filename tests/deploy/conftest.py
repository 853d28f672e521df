"""Fixtures of the cross-datacenter tests: a central broker and two edges (bj, sh),
rendered and started from deploy/mosquitto/ the way docs/deploy.md does it."""

from __future__ import annotations

import os

import pytest

from harness.broker import mosquitto_binary
from harness.xdc import Xdc


@pytest.fixture
def xdc(tmp_path, prefix):
    if mosquitto_binary() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("mosquitto is not installed; CI must run integration tests")
        pytest.skip("mosquitto is not installed")
    with Xdc(tmp_path / "xdc", prefix=prefix, dcs=("bj", "sh")) as cluster:
        yield cluster
