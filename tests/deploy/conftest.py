"""Fixtures of the cross-datacenter tests: a central broker and two edges (bj, sh),
rendered and started from deploy/mosquitto/ the way docs/deploy.md does it."""

from __future__ import annotations

import pytest

from harness.require import require_tools
from harness.xdc import Xdc


@pytest.fixture
def xdc(tmp_path, prefix):
    require_tools("mosquitto")
    with Xdc(tmp_path / "xdc", prefix=prefix, dcs=("bj", "sh")) as cluster:
        yield cluster
