"""Files holding credentials are never readable by others, from the moment they exist:
docs/deploy.md's steps, mkpasswd.sh and render.py, run with a permissive umask."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness.broker import ROOT

DOC = ROOT / "docs" / "deploy.md"
CONF = ROOT / "deploy" / "mosquitto"


def _step(name: str) -> str:
    return dict(re.findall(r"```sh\n# step: ([\w-]+)\n(.*?)```", DOC.read_text(), re.S))[name]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sh(script: str, cwd: Path, **env: str) -> None:
    p = subprocess.run(["sh", "-eu", "-c", "umask 022\n" + script], cwd=cwd, env={**os.environ, **env},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_documented_credentials_step_writes_every_file_0600(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "credentials").write_text(
        "mschedule-bridge-bj:a\nmschedule-uplink-bj:b\nmschedule-bridge-sh:c\nmschedule-uplink-sh:d\nmschedule-master:e\n"
    )
    _sh(_step("central-credentials"), tmp_path, ETC=str(etc), CENTRAL_MASTER="127.0.0.1:1884", DCS="bj sh")
    for name in ("bridge-bj.credentials", "bridge-sh.credentials", "master.env"):
        assert _mode(tmp_path / name) == 0o600, name
    assert "chmod" not in _step("central-credentials")


def test_mkpasswd_creates_the_credentials_0600_and_tightens_an_old_looser_file(tmp_path):
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    creds = tmp_path / "credentials"
    _sh(f'"{CONF}/mkpasswd.sh" passwd credentials alice', tmp_path)
    assert _mode(creds) == 0o600
    creds.chmod(0o644)
    _sh(f'"{CONF}/mkpasswd.sh" passwd credentials bob', tmp_path)
    assert _mode(creds) == 0o600


def test_render_never_reuses_a_leftover_temp_file_and_its_looser_mode(tmp_path):
    creds = tmp_path / "bridge.credentials"
    creds.write_text("mschedule-bridge-bj:pw1\nmschedule-uplink-bj:pw2\n")
    out = tmp_path / "etc"
    out.mkdir()
    leftover = out / ".mosquitto.conf.tmp"
    leftover.write_text("")
    leftover.chmod(0o666)
    p = subprocess.run([sys.executable, str(CONF / "render.py"), "edge", "--out", str(out), "--dc", "bj",
                        "--central", "127.0.0.1:1883", "--credentials", str(creds)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    conf = out / "mosquitto.conf"
    assert "pw1" in conf.read_text()
    assert _mode(conf) & 0o007 == 0  # group-readable at most (mosquitto re-reads it after dropping root)
