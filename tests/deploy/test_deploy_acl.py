"""The ACL matrix, on brokers started from the shipped configs.

Mosquitto grants a forbidden subscription and answers a forbidden publish with a
PUBACK, so every denial here is asserted by delivery: the forbidden message is sent
first, an allowed one after it on the same path, and once the allowed one has
arrived the forbidden one must not have.
"""

from __future__ import annotations

import uuid

from harness.fleet import start_master
from harness.mqtt import Collector
from harness.procs import wait_until
from harness.xdc import MASTER_USER, MONITOR_USER, OPERATOR_USER, bridge_user, uplink_user
from mschedule_agent.transport import MqttTransport


def payloads(c: Collector, topic: str) -> list[bytes]:
    with c._cond:
        return [m.payload for m in c.messages if m.topic == topic]


def test_agent_reads_and_writes_only_its_own_topics(xdc, topics):
    p = topics.prefix
    central = topics.dc("bj")
    a = xdc.add_agent("bj")
    b = xdc.add_agent("bj")
    xdc.wait_reloaded("bj", a)
    xdc.wait_reloaded("bj", b)
    with (
        Collector(xdc.url("central", MASTER_USER), [f"{p}/#"]) as master,
        Collector(xdc.url("bj", b), topics.agent_subscriptions(b)) as agent_b,
        Collector(xdc.url("bj", a), ["#", "$SYS/#", topics.tasks(b), topics.control(b), topics.results(b)]) as agent_a,
    ):
        # Forgeries by A, each acknowledged by the broker and then dropped.
        agent_a.publish(topics.tasks(b), b"forged-task")
        agent_a.publish(topics.control(b), b"forged-kill")
        agent_a.publish(topics.results(b), b"forged-result")
        agent_a.publish(topics.status(b), b"forged-status", retain=True)
        agent_a.publish(topics.heartbeat(b), b"forged-heartbeat", retain=True)
        agent_a.publish(topics.tasks(a), b"self-task")  # an agent cannot hand itself work either
        # The real traffic, after the forgeries on the same paths.
        master.publish(central.tasks(b), b"task-for-b")
        master.publish(central.control(b), b"kill-for-b")
        master.publish(central.tasks(a), b"task-for-a")
        agent_b.publish(topics.status(b), b"status-of-b", retain=True)
        agent_b.publish(topics.heartbeat(b), b"heartbeat-of-b", retain=True)
        agent_b.publish(topics.results(b), b"result-of-b")

        agent_b.wait_for(lambda m: m.payload == b"kill-for-b")
        master.wait_for(lambda m: m.payload == b"result-of-b")
        agent_a.wait_for(lambda m: m.payload == b"task-for-a")

        assert payloads(agent_b, topics.tasks(b)) == [b"task-for-b"]
        assert payloads(agent_b, topics.control(b)) == [b"kill-for-b"]
        assert payloads(master, central.results(b)) == [b"result-of-b"]
        assert payloads(master, central.status(b)) == [b"status-of-b"]
        assert payloads(master, central.heartbeat(b)) == [b"heartbeat-of-b"]
        # Subscribed to '#' and to B's topics, A got its own task and nothing else.
        assert [(m.topic, m.payload) for m in agent_a.messages] == [(topics.tasks(a), b"task-for-a")]

    # The retained status at central is B's own, not the forgery.
    with Collector(xdc.url("central", MONITOR_USER), [central.status(b)]) as late:
        assert [m.payload for m in late.wait_for(lambda m: m.retain)] == [b"status-of-b"]


def test_anonymous_wrong_and_borrowed_credentials_are_refused(xdc):
    a = xdc.add_agent("bj")
    b = xdc.add_agent("bj")
    xdc.wait_reloaded("bj", b)
    for site in ("central", "bj", "sh"):
        assert not xdc.can_connect(site, None), f"anonymous client accepted by {site}"
        assert not xdc.can_connect(site, MONITOR_USER, "not-the-password"), f"wrong password accepted by {site}"
    assert not xdc.can_connect("bj", b, xdc.edges["bj"].password(a)), "A's password opened B's account"
    assert not xdc.can_connect("sh", a, xdc.edges["bj"].password(a)), "a bj agent was accepted by the sh edge"
    assert not xdc.can_connect("central", a, xdc.edges["bj"].password(a)), "a bj agent was accepted by central"
    # The positive controls: the right credentials do get in.
    assert xdc.can_connect("bj", a)
    assert xdc.can_connect("central", MASTER_USER)


def test_the_master_logs_in_on_its_own_listener_and_nobody_else_does(xdc):
    c = xdc.central
    assert xdc.can_connect("central", MASTER_USER, port=c.master_port)
    assert not xdc.can_connect("central", MASTER_USER, port=c.port), "the master's user on the shared listener"
    for user in (OPERATOR_USER, MONITOR_USER):
        assert xdc.can_connect("central", user, port=c.port)
        assert not xdc.can_connect("central", user, port=c.master_port), f"{user} got into the master's listener"
    assert not xdc.can_connect("central", None, port=c.master_port)


def test_a_second_master_with_the_same_credential_is_refused_and_the_first_carries_on(xdc, topics, tmp_path):
    """With client ids forced to usernames, the second master's probe would take over the
    first one's session and win; its own listener keeps the master's single-instance check."""
    url = xdc.url("central", MASTER_USER)
    first = start_master(tmp_path / "m1", url, topics.prefix, http=False)
    try:
        second = start_master(tmp_path / "m2", url, topics.prefix, http=False, wait=False)
        try:
            wait_until(lambda: not second.running(), 30, what="the second master to give up")
            assert second.proc.returncode == 2
            assert "another mschedule-master" in second.log()
        finally:
            second.stop()
        assert first.running()
        assert "took over" not in first.log() and "disconnected from" not in first.log(), first.log()[-2000:]
    finally:
        first.stop()


def test_one_agent_cannot_take_over_another_agents_session(xdc, topics):
    """use_username_as_clientid: a client id is the username, whatever the client sends."""
    a = xdc.add_agent("bj")
    b = xdc.add_agent("bj")
    xdc.wait_reloaded("bj", b)
    with (
        Collector(xdc.url("bj", b), topics.agent_subscriptions(b), client_id=f"mschedule-agent-{b}") as agent_b,
        Collector(xdc.url("central", MASTER_USER), []) as master,
    ):
        for stolen_id in (f"mschedule-agent-{b}", b):
            thief = MqttTransport(xdc.url("bj", a), client_id=stolen_id, clean_start=True, session_expiry=0)
            thief.start(connect_timeout=10)
            try:
                assert thief.wait_connected(10)
            finally:
                thief.stop()
        master.publish(topics.dc("bj").tasks(b), b"still-mine")
        agent_b.wait_for(lambda m: m.payload == b"still-mine")
        assert agent_b.transport.connect_count == 1, "B was disconnected by a client using its id"


def test_operator_submits_and_follows_but_cannot_touch_agents(xdc, topics):
    p = topics.prefix
    b = xdc.add_agent("bj")
    xdc.wait_reloaded("bj", b)
    central = topics.dc("bj")
    with (
        Collector(xdc.url("central", MASTER_USER), [topics.submit()]) as master,
        Collector(xdc.url("bj", b), topics.agent_subscriptions(b)) as agent_b,
        Collector(
            xdc.url("central", OPERATOR_USER),
            [f"{p}/tasks/+/progress", topics.submit_reply("r1"), central.results(b), central.status(b), "#"],
        ) as operator,
    ):
        operator.publish(central.tasks(b), b"operator-task")
        operator.publish(topics.submit(), b"submission")
        master.wait_for(lambda m: m.payload == b"submission")
        agent_b.publish(topics.results(b), b"result-of-b")
        agent_b.publish(topics.status(b), b"status-of-b", retain=True)
        master.publish(central.tasks(b), b"master-task")
        master.publish(topics.submit_reply("r1"), b"reply")
        master.publish(topics.task_progress("t1"), b"progress")
        agent_b.wait_for(lambda m: m.payload == b"master-task")
        operator.wait_for(lambda m: m.payload == b"progress")
        assert payloads(agent_b, topics.tasks(b)) == [b"master-task"]
        # Subscribed to "#" too (overlapping subscriptions deliver copies): replies and progress only.
        assert {m.payload for m in operator.messages} == {b"progress", b"reply"}


def test_a_bridge_credential_speaks_only_for_its_own_datacenter(xdc, topics):
    """A compromised edge cannot publish as another datacenter's agents, nor read its tasks."""
    xdc.edges["bj"].broker.stop()  # free the bridges' usernames (one connection per user)
    agent = uuid.uuid4().hex
    tasks = [topics.dc("sh").tasks(agent), topics.dc("bj").tasks(agent)]
    with (
        Collector(xdc.url("central", MONITOR_USER), [f"{topics.prefix}/#"]) as monitor,
        Collector(xdc.url("central", MASTER_USER), []) as master,
        Collector(xdc.url("central", uplink_user("bj")), []) as fake_uplink,
        Collector(xdc.url("central", bridge_user("bj")), tasks) as fake_downlink,
    ):
        fake_uplink.publish(topics.dc("sh").results(agent), b"as-sh")
        fake_uplink.publish(topics.results(agent), b"as-central-agent")
        fake_uplink.publish(topics.submit(), b"a-submission")
        fake_uplink.publish(topics.dc("bj").tasks(agent), b"a-task")  # the uplink only writes upwards
        fake_downlink.publish(topics.dc("bj").results(agent), b"downlink-writes")
        fake_uplink.publish(topics.dc("bj").results(agent), b"as-bj")
        monitor.wait_for(lambda m: m.payload == b"as-bj")
        assert [m.payload for m in monitor.messages] == [b"as-bj"]
        master.publish(topics.dc("sh").tasks(agent), b"task-for-sh")
        master.publish(topics.dc("bj").tasks(agent), b"task-for-bj")
        fake_downlink.wait_for(lambda m: m.payload == b"task-for-bj")
        assert [m.payload for m in fake_downlink.messages] == [b"task-for-bj"]
