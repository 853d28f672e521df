"""The fleet simulator runs real agents over the real protocol, and the bench's pure helpers."""

from __future__ import annotations

import math

import pytest

from bench.fleetsim import Fleet
from bench.report import Check, Outcome, markdown
from bench.stats import latency_ms, percentile
from harness.mqtt import Collector
from harness.procs import wait_until
from mschedule_agent import protocol


@pytest.mark.parametrize(
    "values, p, expected",
    [([], 50, math.nan), ([3.0], 99, 3.0), ([1, 2, 3, 4], 50, 2), ([1, 2, 3, 4], 99, 4), (list(range(1, 101)), 90, 90)],
)
def test_percentile_is_nearest_rank(values, p, expected):
    got = percentile(values, p)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_latency_is_reported_in_milliseconds():
    lat = latency_ms([0.001, 0.002, 0.010])
    assert (lat["n"], lat["p50_ms"], lat["max_ms"]) == (3, 2.0, 10.0)


@pytest.mark.parametrize(
    "check, ok",
    [
        (Check("p50", 4.0, 5.0, "ms"), True),
        (Check("p50", 6.0, 5.0, "ms"), False),
        (Check("rate", 6000, 5000, "/s", ">="), True),
        (Check("rate", 4000, 5000, "/s", ">="), False),
        (Check("p50", math.nan, 5.0, "ms"), False),
    ],
)
def test_check_compares_against_its_target(check, ok):
    assert check.ok is ok


def test_an_outcome_with_a_missing_result_is_not_ok_even_when_fast():
    o = Outcome("9", "x", checks=[Check("t", 1, 2)], correct=False, problems=["1 target(s) missing"])
    assert not o.ok
    table = markdown({"baselines": {}}, [o])
    assert "NO: 1 target(s) missing" in table and "| 9 | x | t |" in table


def test_fleet_agents_register_run_each_task_once_and_report(broker, prefix, tmp_path):
    with Fleet(broker.url, prefix, tmp_path, 4, workers=2, heartbeat=1.0) as fleet:
        assert len(set(fleet.ids)) == 4
        with Collector(broker.url, [f"{prefix}/results/+", f"{prefix}/agents/+/status"]) as c:
            registered = c.wait_for(lambda m: m.topic.endswith("/status") and b'"register"' in m.payload, 10, count=4)
            assert {protocol.decode(m.payload).id for m in registered} == set(fleet.ids)
            for i, agent_id in enumerate(fleet.ids):
                task = protocol.Task(id=f"smoke-{i}", script=b"echo hi-$MSCHEDULE_TASK_ID")
                for _ in range(2):  # delivered twice: must run once
                    c.publish(f"{prefix}/agents/{agent_id}/tasks", protocol.encode(task))
            expected = {f"smoke-{i}" for i in range(4)}

            def results() -> dict:
                # A duplicate delivery may bring the stored result again: collect by id.
                found = [protocol.decode(m.payload) for m in list(c.messages) if b'"type":"result"' in m.payload]
                return {r.id: r for r in found}

            wait_until(lambda: set(results()) >= expected, 20, what="a result for every task")
            by_id = results()
            assert set(by_id) == expected
            assert all(r.state == "SUCCEED" and r.code == 0 for r in by_id.values())
            assert by_id["smoke-2"].output == b"hi-smoke-2\n"
        stats = fleet.stats()
        assert (stats["agents"], stats["connected"], stats["runs"]) == (4, 4, 4)


def test_the_readme_table_is_replaced_between_its_markers_only(tmp_path):
    from bench.report import README_END, README_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\noutro\n")
    assert update_readme(readme, "| new |\n")
    assert readme.read_text() == f"intro\n{README_START}\n| new |\n{README_END}\noutro\n"
    (tmp_path / "other.md").write_text("no markers\n")
    assert not update_readme(tmp_path / "other.md", "| x |")
