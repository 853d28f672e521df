"""The listening clock, pure: how long the master could not hear, from the daemon's passes."""

from __future__ import annotations

import pytest

from mschedule_master.listening import FREEZE_GAP, ListeningClock


def test_a_master_that_keeps_listening_defers_nothing():
    clock = ListeningClock(heard_until=100.0)
    assert clock.heard(100.4) == pytest.approx(0.4), "from the last run's mark to the first catch-up: deaf"
    for now in (100.9, 101.4, 101.9):
        assert clock.observe(now)
        assert clock.heard(now) == 0.0


@pytest.mark.parametrize(
    ("passes", "deaf"),
    [
        # (time, what happens): "pass" a timer pass while listening, "deaf" disconnected or behind,
        # "heard" caught up again
        ([(1.0, "pass"), (1.5, "deaf"), (9.5, "heard")], 8.5),  # disconnected after the pass at 1.0
        ([(1.0, "pass"), (1.0 + FREEZE_GAP + 5, "pass"), (1.0 + FREEZE_GAP + 5.2, "heard")], FREEZE_GAP + 5.2),
        ([(1.0, "pass"), (0.5, "pass"), (0.6, "heard")], 0.0),  # the wall clock went back: nothing to defer
    ],
)
def test_deaf_time_runs_from_the_last_pass_heard_to_the_catch_up(passes, deaf):
    clock = ListeningClock(heard_until=0.0, listening=True)
    result = None
    for now, what in passes:
        if what == "pass":
            if clock.observe(now):
                clock.heard(now)
        elif what == "deaf":
            clock.deaf()
        else:
            result = clock.heard(now)
    assert result == pytest.approx(deaf)


def test_a_gap_between_passes_longer_than_freeze_gap_is_a_freeze():
    clock = ListeningClock(heard_until=10.0, listening=True)
    assert clock.observe(10.0 + FREEZE_GAP)
    assert not clock.observe(10.0 + FREEZE_GAP + 0.01)
    assert not clock.listening, "deaf until the daemon has caught up with its broker"
