"""What the `mschedule` CLI imports before its first request (issue 22: start <= 80 ms).

Not a timing test: it asserts that the modules which cost the start time (rich ~60 ms,
http.client/urllib.request with the email package ~65 ms, dataclasses ~20 ms) are not
loaded for ``--help`` and for a plain JSON command, and that the commands still work.
"""

from __future__ import annotations

import json
import subprocess
import sys

#: Modules the CLI must not load for --help or a --json read.
HEAVY = ("rich", "http.client", "urllib.request", "email", "ssl", "dataclasses", "threading", "mschedule_master.jobs",
         "orjson", "zoneinfo")  # fmt: skip

_PROBE = r"""
import contextlib, io, json, sys
out_path, argv = sys.argv[1], sys.argv[2:]
from mschedule_master import cli
stdout = io.StringIO()
with contextlib.redirect_stdout(stdout):
    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code
with open(out_path, "w") as f:
    json.dump({"status": status, "stdout": stdout.getvalue(), "loaded": sorted(sys.modules)}, f)
"""


def probe(tmp_path, *argv: str) -> dict:
    out = tmp_path / "probe.json"
    subprocess.run([sys.executable, "-c", _PROBE, str(out), *argv], capture_output=True, timeout=60, check=True)
    return json.loads(out.read_text())


def heavy(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_help_loads_no_rich_http_or_dataclasses(tmp_path):
    report = probe(tmp_path, "--help")
    assert report["status"] == 0 and "run a script on targets" in report["stdout"]
    assert heavy(report["loaded"]) == []


def test_a_json_read_loads_no_rich_http_client_or_dataclasses(tmp_path, live_api):
    report = probe(tmp_path, "--master", live_api.url, "agents", "--json")
    assert report["status"] == 0
    assert sorted(a["id"] for a in json.loads(report["stdout"])) == ["db1", "web1", "web2"]
    assert heavy(report["loaded"]) == []
    assert "socket" in report["loaded"]  # it did talk to the master, over the small client


def test_a_table_still_draws_with_rich(tmp_path, live_api):
    report = probe(tmp_path, "--master", live_api.url, "agents")
    assert report["status"] == 0 and "3 agents" in report["stdout"] and "web1" in report["stdout"]
    assert "rich.console" in report["loaded"]  # the probe shows what it claims to


#: The modules of commands defined outside cli.py (cli._ELSEWHERE).
OTHER_COMMANDS = ("mschedule_master.cli_targets", "mschedule_master.cli_jobs", "mschedule_master.cli_schedules",
                  "mschedule_master.cli_keys", "mschedule_master.cli_audit")  # fmt: skip


def test_help_and_a_json_read_import_no_other_commands_module(tmp_path, live_api):
    """Only the command being run is built: --help lists every command without importing
    the modules that define them, and `agents --json` imports none of them either."""
    for argv in (["--help"], ["--master", live_api.url, "agents", "--json"]):
        report = probe(tmp_path, *argv)
        assert report["status"] == 0
        assert [m for m in report["loaded"] if m in OTHER_COMMANDS] == [], argv
    report = probe(tmp_path, "keys", "gen", "--help")  # a command of its own module: that one only
    assert report["status"] == 0 and "usage: mschedule keys gen" in report["stdout"]
    assert [m for m in report["loaded"] if m in OTHER_COMMANDS] == ["mschedule_master.cli_keys"]


def test_each_command_parses_and_helps_as_with_every_command_built():
    """The parser built for one command is, for that command, the parser built whole."""
    from mschedule_master import cli

    whole = cli.parser()
    commands = whole._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(cli._ELSEWHERE) < set(commands) and len(commands) == 15
    for name, full in commands.items():
        lazy = cli.parser([name])._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
        assert lazy.format_help() == full.format_help(), name
    assert cli.parser(["--help"]).format_help() == whole.format_help()


def test_the_mschedule_command_exits_through_entry_with_mains_status():
    """`mschedule` is cli.entry (main, then an exit that skips the heap scans): its exit
    status and its last words are main's."""
    import tomllib
    from pathlib import Path

    from mschedule_master import cli

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mschedule"] == "mschedule_master.cli:entry"
    r = subprocess.run([sys.executable, "-c", "from mschedule_master.cli import entry; entry()",
                        "--master", "http://127.0.0.1:1", "agents"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == cli.EXIT_UNREACHABLE and "cannot reach the master" in r.stderr
