"""Packaging: the agent, installed on every target machine, brings only what it imports."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MASTER_ONLY = ("aiohttp", "rich")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_agent_install_does_not_pull_the_masters_libraries():
    project = _pyproject()["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["dependencies"]}
    assert not names & set(MASTER_ONLY), names
    extra = " ".join(project["optional-dependencies"]["master"])
    assert all(m in extra for m in MASTER_ONLY)


def _run_blocking(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which the master's libraries cannot be imported."""
    block = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in MASTER_ONLY)
    return subprocess.run([sys.executable, "-c", block + code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_agent_daemon_runs_without_the_masters_libraries():
    r = _run_blocking("import mschedule_agent.daemon, mschedule_agent.agent; print('ok')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_the_master_without_its_extra_says_what_to_install():
    r = _run_blocking(
        "import importlib.util as u\n"
        "real = u.find_spec\n"
        f"u.find_spec = lambda n, *a: None if n in {MASTER_ONLY!r} else real(n, *a)\n"
        "import mschedule_master.daemon\n"
    )
    assert r.returncode == 1
    assert "pip install 'mschedule[master]'" in r.stderr
    assert "Traceback" not in r.stderr
