"""One rule for tests that need an outside tool: under CI a missing tool fails the run
(CI must exercise everything), elsewhere the test is skipped with the line that installs it."""

from __future__ import annotations

import os
import shutil

import pytest

from .broker import mosquitto_binary
from .nats import nats_binary

#: What installs each tool on Debian (the bootstrap installs these).
_APT = {
    "mosquitto": "mosquitto",
    "mosquitto_pub": "mosquitto-clients",
    "mosquitto_sub": "mosquitto-clients",
    "mosquitto_rr": "mosquitto-clients",
    "jq": "jq",
    "openssl": "openssl",
    "chromium": "chromium",
    "nats-server": "nats-server",
    "initdb": "postgresql",
}


def in_ci() -> bool:
    """True when running under CI (`.ci/run` sets CI=1; CI=true works too)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _have(tool: str) -> bool:
    if tool == "mosquitto":
        return mosquitto_binary() is not None
    if tool == "nats-server":
        return nats_binary() is not None
    if tool == "initdb":  # Debian keeps the server binaries off PATH
        from .postgres import pg_bindir

        return pg_bindir() is not None
    return shutil.which(tool) is not None


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if not _have(t)]


def require_tools(*tools: str, why: str = "") -> None:
    """Fail (under CI) or skip (elsewhere) the calling test when any of ``tools`` is missing."""
    missing = missing_tools(*tools)
    if not missing:
        return
    packages = " ".join(sorted({_APT.get(t, t) for t in missing}))
    what = f"{', '.join(missing)} not installed" + (f" ({why})" if why else "")
    if in_ci():
        pytest.fail(f"{what}; CI must run this test: apt-get install {packages}")
    pytest.skip(f"{what}: apt-get install {packages}")
