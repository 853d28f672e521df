"""One scenario end to end with a handful of agents and a real master: the bench code works
and its correctness checks hold (every target's result present, every script run once)."""

from __future__ import annotations

import pytest

from bench.baselines import mqtt_round_trip, spawn_rate
from bench.scenarios import Context, scenario_1, scenario_2


@pytest.fixture
def ctx(broker, tmp_path):
    return Context(broker=broker, workdir=tmp_path, quick=True, baselines={}, sizes={"s1_tasks": 10, "s2_sizes": [5]})


def test_baselines_measure_something(broker, prefix):
    spawn = spawn_rate(2, 20)
    rtt = mqtt_round_trip(broker.url, prefix, 20)
    assert spawn["per_s"] > 0 and spawn["count"] == 20
    assert rtt["n"] == 20 and 0 < rtt["p50_ms"] <= rtt["p99_ms"]


def test_sequence_scenario_stores_every_result(ctx):
    o = scenario_1(ctx)
    assert o.error is None and o.correct, o.problems
    assert o.metrics["submit_to_stored"]["n"] == 10
    assert [c.figure for c in o.checks] == ["p50 submit -> result stored", "p99"]


def test_fanout_scenario_stores_every_result(ctx):
    o = scenario_2(ctx)
    assert o.correct, o.problems
    assert o.metrics["fleet"]["agents"] == 5
    assert o.checks[0].figure == "5 agents done" and o.checks[0].value > 0
