"""The CLI a newcomer meets (issue 11): git-style short ids, 80 columns, remote text made
visible, plurals, `targets` and the question before a wide rollout. Pure functions are
tested as tables; the commands against the in-memory service over real HTTP."""

from __future__ import annotations

import io
import json
import re
import sys
import uuid

import pytest
from rich.console import Console

from mschedule_master import cli
from mschedule_master.cli_ids import AmbiguousId, expand, shortest_unique
from mschedule_master.cli_text import plural, visible
from mschedule_master.states import TargetState

from .conftest import FakeService, make_agent

# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("ids", "shown"),
    [
        (["0123456789ab", "fedcba987654"], ["01234567", "fedcba98"]),  # at least 8
        (["0123456789ab", "0123456799ab"], ["012345678", "012345679"]),  # one past the common part
        (["abc"], ["abc"]),  # never longer than the id
        (["aaaaaaaaaa1", "aaaaaaaaaa2", "b"], ["aaaaaaaaaa1", "aaaaaaaaaa2", "b"]),
        ([], []),
    ],
)
def test_tables_show_the_shortest_unique_prefix_of_at_least_8(ids, shown):
    assert [shortest_unique(ids)[i] for i in ids] == shown


@pytest.mark.parametrize(
    ("prefix", "result"),
    [("0123", "0123abcd"), ("0123abcd", "0123abcd"), ("9", "9"), ("fe", AmbiguousId)],
)
def test_a_unique_prefix_names_its_id_and_an_ambiguous_one_is_an_error(prefix, result):
    ids = ["0123abcd", "fe01", "fe02"]
    if result is AmbiguousId:
        with pytest.raises(AmbiguousId, match=r"'fe' is ambiguous \(fe01, fe02\)"):
            expand(prefix, ids, "task")
    else:
        assert expand(prefix, ids, "task") == result


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text", "plain text"),
        ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
        ("nul\x00byte", "nul\\x00byte"),
        ("bell\x07 del\x7f c1\x9b", "bell\\x07 del\\x7f c1\\x9b"),
        ("rtl \u202eevil", "rtl \\u202eevil"),
        ("lines\nand\ttabs", "lines\nand\ttabs"),
        ("carriage\rreturn", "carriage\\x0dreturn"),
        ("héllo wörld ✓ 中文", "héllo wörld ✓ 中文"),
    ],
)
def test_remote_text_shows_control_characters_as_escapes(raw, shown):
    assert visible(raw) == shown
    assert visible("a\nb", keep_newlines=False) == "a\\x0ab"


@pytest.mark.parametrize(("n", "text"), [(0, "0 targets"), (1, "1 target"), (2, "2 targets")])
def test_plurals_read_right(n, text):
    assert plural(n, "target") == text


def render(renderable, width: int = 80) -> list[str]:
    con = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    con.print(renderable)
    return con.export_text().splitlines()


def test_the_progress_line_fits_80_columns_with_its_bar():
    con = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    view = cli._ProgressView(con, "t")
    view.update({"id": uuid.uuid4().hex, "state": "RUNNING", "target_count": 1000,
                 "counts": {"SUCCEED": 400, "FAILED": 12, "RUNNING": 50, "WAITING": 530, "KILLED": 3}})  # fmt: skip
    (line,) = render(view.progress.make_tasks_table(view.progress.tasks))
    assert len(line) <= 80, line
    assert "RUNNING" in line and "━" in line and "415/1000" in line and "400 succeeded" in line, line


def test_the_targets_table_fits_80_columns_without_cutting_states():
    ids = [uuid.uuid4().hex for _ in range(3)]
    states = ["RUNNING", "UNREACHABLE", "SUCCEED"]
    task = {"id": uuid.uuid4().hex, "state": "RUNNING", "targets": {
        a: {"state": s, "hostname": f"host-{i}.a-rather-long-domain.example", "code": None, "duration": 12.5,
            "output": "\x1b[2Jdeployed version 1.2.3 to the host and restarted every service on it\n",
            "output_encoding": "utf-8"}
        for i, (a, s) in enumerate(zip(ids, states, strict=True))}}  # fmt: skip
    lines = render(cli.targets_table(task))
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines), text
    for a, s in zip(ids, states, strict=True):
        assert s in text and a[:8] in text and a not in text
    assert "\\x1b[2J" in text and "\x1b" not in text


def test_the_tasks_table_fits_80_columns(capsys):
    con = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    tasks = [{"id": uuid.uuid4().hex, "name": "nightly deploy \x1b[31mof web", "state": s, "target_count": 120,
              "counts": {"SUCCEED": 100, "FAILED": 3, "RUNNING": 10, "WAITING": 7}, "created_at": 1.7e9}
             for s in ("RUNNING", "SUCCEED", "UNREACHABLE")]  # fmt: skip

    class Page:
        def get(self, path, **query):
            return {"tasks": tasks}

    class Args:
        state, limit, json = None, 20, False

    assert cli.cmd_tasks(Page(), Args(), con) == 0
    lines = con.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    for t in tasks:  # the short id and the whole state on the row's first line
        assert any(t["id"][:8] in line and t["state"] in line for line in lines), "\n".join(lines)
    assert "103/120 done:" in "\n".join(lines)
    assert cli.progress_text(tasks[0]["counts"], 120) == "103/120 done: 3 failed, 10 running, 7 waiting"
    assert cli.progress_text({"SUCCEED": 2}, 2) == "2/2 done"
    assert "\\x1b[31m" in "".join(lines) and "\x1b" not in "".join(lines)


def test_the_agents_table_fits_80_columns():
    agents = [{"id": uuid.uuid4().hex, "hostname": f"web-{i}.example", "ip": ["10.0.0.1", "fe80::1"],
               "labels": {"role": "web", "zone": "bj"}, "online": i % 2 == 0, "last_seen": None, "running": []}
              for i in range(3)]  # fmt: skip
    lines = render(cli.agents_table(agents, plural(3, "agent")))
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert "offline" in "\n".join(lines) and all(a["id"][:8] in "\n".join(lines) for a in agents)


# --------------------------------------------------------------------------- commands


def mschedule(live_api, *args: str) -> int:
    return cli.main(["--master", live_api.url, *args])


@pytest.fixture
def uuid_service() -> FakeService:
    """Agents with uuid-like ids, two of them sharing their first 9 characters."""
    return FakeService([make_agent("7f3c9a1e2b4d4e0f8a6b5c4d3e2f1a0b", role="web"),
                        make_agent("7f3c9a1e2c000000000000000000000c", role="web"),
                        make_agent("0b9d2c1f6a0e4f5d9c8b7a6f5e4d3c2b", online=False, role="db")])  # fmt: skip


@pytest.fixture
def uuid_api(uuid_service, serve_api):
    with serve_api(uuid_service) as live:
        yield live


def test_id_prefixes_work_in_run_status_output_and_kill(uuid_api, capsys):
    service = uuid_api.service
    assert mschedule(uuid_api, "run", "-t", "7f3c9a1e2b", "--no-wait", "-c", "true") == 0  # an agent id prefix
    assert service.submitted[-1].targets == ["7f3c9a1e2b4d4e0f8a6b5c4d3e2f1a0b"]
    capsys.readouterr()
    assert mschedule(uuid_api, "run", "-t", "7f3c9a1e2", "--no-wait", "-c", "true") == 2
    assert "agent id prefix '7f3c9a1e2' is ambiguous" in capsys.readouterr().err
    (task_id,) = service.task_by_id
    prefix = task_id[:6]  # the fake's ids are task0001 ...: a prefix of 6 is unique
    uuid_api.call(lambda: service.set_target(task_id, "7f3c9a1e2b4d4e0f8a6b5c4d3e2f1a0b", TargetState.RUNNING,
                                             stdout=b"out\n", stdout_bytes=4))  # fmt: skip
    assert mschedule(uuid_api, "status", prefix) == 0
    out = capsys.readouterr().out
    assert f"task {task_id} RUNNING" in out and "7f3c9a1e" in out
    assert mschedule(uuid_api, "output", prefix, "7f3c") == 0
    assert capsys.readouterr().out == "out\n"
    assert mschedule(uuid_api, "kill", prefix) == 0
    assert service.killed == [task_id]


def test_targets_previews_the_matching_agents(uuid_api, capsys):
    assert mschedule(uuid_api, "targets", "role=web") == 0
    out = capsys.readouterr().out
    assert "2 agents match role=web" in out and "7f3c9a1e2b" in out and "7f3c9a1e2c" in out
    assert mschedule(uuid_api, "targets", "0b9d", "--json") == 0
    assert [a["id"] for a in json.loads(capsys.readouterr().out)] == ["0b9d2c1f6a0e4f5d9c8b7a6f5e4d3c2b"]
    assert mschedule(uuid_api, "targets", "role=nosuch") == 2
    assert "matched no agent" in capsys.readouterr().err
    assert uuid_api.service.task_by_id == {}


def test_run_asks_before_more_targets_than_its_limit_unless_yes(uuid_api, capsys, monkeypatch):
    service = uuid_api.service
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: nobody to ask
    assert mschedule(uuid_api, "run", "-t", "role=web", "--confirm-over", "1", "--no-wait", "-c", "true") == 2
    err = capsys.readouterr().err
    assert "match 2 targets" in err and "more than 1: add --yes" in err and service.task_by_id == {}
    assert mschedule(uuid_api, "run", "-t", "role=web", "--confirm-over", "1", "--yes", "--no-wait", "-c", "true") == 0
    assert mschedule(uuid_api, "run", "-t", "role=web", "--confirm-over", "2", "--no-wait", "-c", "true") == 0
    monkeypatch.setenv("MSCHEDULE_CONFIRM_OVER", "1")
    assert mschedule(uuid_api, "run", "-t", "role=web", "--no-wait", "-c", "true") == 2
    assert len(service.task_by_id) == 2


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "started"), [("y\n", True), ("\n", False)])
def test_on_a_terminal_run_asks_and_starts_only_on_yes(uuid_api, capsys, monkeypatch, answer, started):
    monkeypatch.setattr(sys, "stdin", _Tty(answer))
    rc = mschedule(uuid_api, "run", "-t", "role=web", "--confirm-over", "1", "--no-wait", "-c", "true")
    out = capsys.readouterr().out
    assert "Start on 2 targets (" in out and "? [y/N]" in out
    assert (rc == 0) == started and bool(uuid_api.service.task_by_id) == started


def test_a_target_waiting_for_an_offline_agent_says_so(uuid_api, capsys):
    assert mschedule(uuid_api, "run", "-t", "0b9d2c1f6a0e4f5d9c8b7a6f5e4d3c2b", "--no-wait", "-c", "true") == 0
    (task_id,) = uuid_api.service.task_by_id
    capsys.readouterr()
    mschedule(uuid_api, "status", task_id)
    out = capsys.readouterr().out
    assert re.search(r"WAITING \(agent offline:\s+waiting for it\)", out), out
    client = cli.Client(uuid_api.url)
    task = client.get(f"/api/v1/tasks/{task_id}")
    assert cli.offline_targets(client, task) == ["0b9d2c1f6a0e4f5d9c8b7a6f5e4d3c2b.example (0b9d2c1f)"]
    assert "0 running, 1 waiting" in cli.counts_text({"DISPATCHED": 1})  # sent is not running


def test_counts_and_titles_use_plurals(live_api, capsys):
    assert mschedule(live_api, "agents", "--label", "role=db") == 0
    assert "1 agent\n" in capsys.readouterr().out
    assert mschedule(live_api, "run", "-t", "web1", "--no-wait", "-c", "true") == 0
    capsys.readouterr()
    assert mschedule(live_api, "targets", "web1") == 0
    assert "1 agent matches web1" in capsys.readouterr().out
