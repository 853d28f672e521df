"""Packaging: the agent, installed on every target machine, brings only what it imports."""

from __future__ import annotations

import re
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


#: What a build tool's warning box looks like (setuptools' "Editable installation." notice:
#: a row of stars between "!!" lines), and what a warning says of itself.
_BOX = re.compile(rb"^\s*(!!|\*{20,})\s*$|Warning\b", re.MULTILINE)


def test_the_box_pattern_knows_setuptools_editable_notice():
    sample = (b"  /tmp/x/setuptools/command/editable_wheel.py:354: BuildBackendWarning: Editable installation.\n  !!\n\n"
              b"          ****************************************************************\n")  # fmt: skip
    assert _BOX.search(sample) and not _BOX.search(b"Successfully installed mschedule-0.1.0\n")


def test_the_bootstraps_editable_install_prints_no_warning_box(tmp_path):
    """`make bootstrap` installs with scripts/pip-install-quiet.sh: run it as bootstrap does
    (an editable install, the one that printed setuptools' box) into a scratch virtualenv."""
    assert "scripts/pip-install-quiet.sh \"$VENV/bin/python\" -e" in (ROOT / "scripts/bootstrap.sh").read_text()
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=60)
    python = venv / "bin" / "python"
    printed = b""
    for args in (["--upgrade", "pip"], ["--no-deps", "-e", str(ROOT), "--config-settings", "editable_mode=compat"]):  # bootstrap's two steps (the box needs a
        r = subprocess.run([str(ROOT / "scripts/pip-install-quiet.sh"), str(python), *args],  # recent pip to show)
                           cwd=ROOT, capture_output=True, timeout=120)  # fmt: skip
        assert r.returncode == 0
        printed += r.stdout + r.stderr
    assert not _BOX.search(printed), printed.decode(errors="replace")
    where = subprocess.run([str(python), "-c", "import mschedule_agent; print(mschedule_agent.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert where.stdout.startswith(str(ROOT)), where  # it did install: an empty output proves nothing
    # a path entry, not setuptools' import finder, whose imports cost every start ~25 ms
    bare = subprocess.run([str(python), "-c", "import sys; print(sorted({'pathlib', 'fnmatch'} & set(sys.modules)))"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bare.stdout.strip() == "[]", bare
