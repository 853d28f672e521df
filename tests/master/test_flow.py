"""flow.py, pure: the master's queue of task copies and its window in flight."""

from __future__ import annotations

import pytest

from mschedule_master.flow import Flow


class Pub:
    def __init__(self) -> None:
        self.done = False

    def wait(self, timeout: float) -> bool:
        return self.done


def test_no_more_than_the_window_is_in_flight_and_the_rest_waits_in_order():
    flow = Flow(window=2)
    for a in ("a", "b", "c"):
        assert flow.put("t", a)
    pubs = {}
    while (key := flow.take()) is not None:
        pubs[key] = Pub()
        flow.sent(key, pubs[key], now=0.0)
    assert list(pubs) == [("t", "a"), ("t", "b")]
    b = flow.backlog("t")
    assert (b.queued, b.in_flight, b.task_queued, b.task_in_flight, b.throttled) == (1, 2, 1, 2, True)
    pubs["t", "b"].done = True
    assert flow.settled(1.0) == [], "a PUBACK behind an unacknowledged copy waits for it"
    pubs["t", "a"].done = True
    assert flow.settled(3.0) == [("t", "a"), ("t", "b")] and flow.lag == 3.0
    assert flow.take() == ("t", "c")


def test_a_second_copy_for_a_target_is_not_queued_while_one_is_on_its_way():
    flow = Flow(window=1)
    assert flow.put("t", "a") and not flow.put("t", "a")
    key = flow.take()
    assert key is not None and flow.holds("t", "a")
    flow.drop(key)
    assert not flow.holds("t", "a") and flow.put("t", "a")


def test_the_accept_by_allowance_is_twice_what_copies_take_to_reach_the_broker():
    flow = Flow(window=4)
    assert flow.allowance(0.0) == 0.0
    flow.put("t", "a")
    flow.sent(("t", "a"), Pub(), now=10.0)
    assert flow.allowance(12.2) == 5.0, "the oldest unacknowledged copy is 2.2 s old: ceil(4.4)"


def test_a_window_below_one_is_refused():
    with pytest.raises(ValueError, match="dispatch_window"):
        Flow(window=0)
