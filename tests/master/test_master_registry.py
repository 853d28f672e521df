"""The registry's online/offline verdicts, with time passed in."""

from __future__ import annotations

from mschedule_agent import protocol as P
from mschedule_master.registry import Change, Registry


def _reg(agent="a1", hb=2.0):
    return P.Register(id=agent, hostname="h1", ip=["10.0.0.1"], labels={"role": "web"}, heartbeat=hb)


def _hb(agent="a1", ts=100.0, interval=2.0):
    return P.Heartbeat(id=agent, hostname="h1", ip=["10.0.0.1"], ts=ts, interval=interval, running=["t1"])


def test_register_then_will_then_heartbeat():
    r = Registry()
    assert r.on_status(_reg(), None, 100.0) == Change("a1", True, "registered")
    assert r.get("a1").labels == {"role": "web"}
    assert r.on_status(P.Offline(id="a1"), None, 101.0) == Change("a1", False, "offline (will)")
    assert r.on_heartbeat(_hb(ts=102.0), None, 102.0, retained=False) == Change("a1", True, "heartbeat")
    assert r.get("a1").running == ["t1"]


def test_offline_when_silent_for_more_than_three_intervals():
    r = Registry()
    r.on_status(_reg(hb=2.0), None, 100.0)
    assert r.sweep(106.0) == []
    assert r.sweep(106.1) == [Change("a1", False, "heartbeat stale")]
    assert r.sweep(200.0) == []


def test_a_stale_retained_heartbeat_does_not_bring_an_agent_online():
    r = Registry()
    r.on_status(_reg(hb=2.0), None, 100.0)
    r.sweep(107.0)
    assert r.on_heartbeat(_hb(ts=90.0), None, 107.0, retained=True) is None
    assert not r.is_online("a1")


def test_a_bridge_down_takes_only_its_datacenters_agents_offline():
    r = Registry()
    r.on_status(_reg("a1"), "bj", 100.0)
    r.on_status(_reg("a2"), None, 100.0)
    assert r.on_bridge("mschedule-bridge-bj", False, 100.5) == [Change("a1", False, "bridge bj down")]
    assert r.on_heartbeat(_hb("a1", ts=101.0), "bj", 101.0, retained=False) is None  # still cut off
    assert r.on_bridge("mschedule-bridge-bj", True, 101.5) == [Change("a1", True, "bridge bj up")]
    assert r.on_bridge("some-other-bridge", False, 102.0) == []


def test_a_bridge_back_up_is_no_evidence_for_its_agents_a_heartbeat_is():
    r = Registry()
    r.on_status(_reg("a1"), "bj", 100.0)
    assert r.on_bridge("mschedule-bridge-bj", False, 101.0) == [Change("a1", False, "bridge bj down")]
    assert r.on_bridge("mschedule-bridge-bj", True, 102.0) == []  # nothing heard since the cut
    assert not r.is_online("a1")
    assert r.on_heartbeat(_hb("a1", ts=102.5), "bj", 102.5, retained=False) == Change("a1", True, "heartbeat")
    # A retained heartbeat from before the cut is no evidence either.
    r.on_bridge("mschedule-bridge-bj", False, 103.0)
    r.on_bridge("mschedule-bridge-bj", True, 104.0)
    assert r.on_heartbeat(_hb("a1", ts=102.9), "bj", 104.1, retained=True) is None
    assert not r.is_online("a1")


def test_a_reloaded_fleet_keeps_online_agents_for_a_grace_and_persists_changes():
    r = Registry()
    r.on_status(_reg(), None, 100.0)
    saved = r.take_dirty()
    assert [a.id for a in saved] == ["a1"] and r.take_dirty() == []
    again = Registry()
    again.load(saved, 500.0)
    assert again.is_online("a1")
    assert again.sweep(506.1) == [Change("a1", False, "heartbeat stale")]
