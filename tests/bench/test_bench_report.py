"""The bench is right about itself (issue 24): its exit status, its profile summary, and its
MQTT baseline measured as a plain paho ping-pong."""

from __future__ import annotations

import pytest

from bench.baselines import plain_round_trip_apart
from bench.profile import summarise
from bench.report import Check, Outcome, exit_status, verdict


def _outcome(sid: str, *, correct: bool | None = True, error: str | None = None, met: bool = True) -> Outcome:
    check = Check("figure", 1.0 if met else 3.0, 2.0)
    return Outcome(sid, "s", checks=[check], correct=correct, error=error)


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ([_outcome("1"), _outcome("2")], 0),
        ([_outcome("1"), _outcome("2", met=False)], 0),  # slow but right: the table says so
        ([_outcome("1"), _outcome("4", correct=False)], 1),  # a missing result fails the run
        ([_outcome("1", correct=None)], 1),  # a scenario that never judged itself
        ([_outcome("1", error="TimeoutError: ...")], 1),
        ([], 1),  # nothing ran
    ],
)
def test_the_bench_exits_zero_only_when_every_scenario_is_correct(outcomes, status):
    assert exit_status(outcomes) == status
    assert ("NOT correct" in verdict(outcomes)) == (status == 1 and bool(outcomes))


def test_the_profile_summary_keeps_the_first_frame_of_an_unlabelled_stack():
    raw = "<module> (<string>:6);spin (<string>:5) 179\n<module> (<string>:4) 21\n"
    s = summarise(raw)
    assert s["samples"] == 200
    assert dict(s["total_pct"])["<string>:<module>"] == 100.0
    assert dict(s["self_pct"]) == {"<string>:spin": 89.5, "<string>:<module>": 10.5}


def test_the_profile_summary_drops_thread_labels_and_shares_by_thread():
    raw = (
        "thread (7317): MainThread 5\n"  # no Python frame: not busy
        "thread (7323): worker;Thread.run (threading.py:982);spin (<string>:5) 75\n"
        "thread (7317): MainThread;<module> (<string>:6);spin (<string>:5) 25\n"
        "thread (7323): worker;Thread.run (threading.py:982);EpollSelector.select (selectors.py:468) 40\n"
    )
    s = summarise(raw)
    assert (s["samples"], s["idle_samples"]) == (100, 45)
    assert dict(s["threads_pct"]) == {"worker": 75.0, "MainThread": 25.0}
    assert not any("7323" in name or "7317" in name for name, _ in s["total_pct"]), "a label is no frame"


def test_the_mqtt_baseline_is_a_plain_paho_ping_pong_in_its_own_process(broker, prefix):
    rtt = plain_round_trip_apart(broker.url, prefix, 30)
    assert rtt["n"] == 30 and 0 < rtt["p50_ms"] <= rtt["p99_ms"]
