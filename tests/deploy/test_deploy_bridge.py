"""The edge -> central bridges with raw MQTT clients (no mschedule daemons): topic
remapping, each edge seeing only its own datacenter, retained statuses and last
wills crossing, bridge state notifications, and bridge cuts losing nothing queued."""

from __future__ import annotations

import sys
import threading
import time
import uuid

from harness.mqtt import Collector
from harness.procs import Proc
from harness.xdc import MASTER_USER, MONITOR_USER
from mschedule_agent import protocol
from mschedule_agent.transport import Incoming, MqttTransport

#: How long a bridge stays cut in the cut tests (the issue's figure).
CUT_SECONDS = 10.0


def by_topic(c: Collector, topic: str) -> list[Incoming]:
    with c._cond:
        return [m for m in c.messages if m.topic == topic]


def register(agent_id: str) -> bytes:
    return protocol.encode(protocol.Register(id=agent_id, hostname=f"host-{agent_id[:6]}", ip=["10.0.0.1"]))


def test_topics_are_remapped_and_each_edge_sees_only_its_own_datacenter(xdc, topics):
    p = topics.prefix
    a = xdc.add_agent("bj")
    c = xdc.add_agent("sh")
    xdc.wait_reloaded("bj", a)
    xdc.wait_reloaded("sh", c)
    with (
        Collector(xdc.url("central", MONITOR_USER), [f"{p}/#"]) as at_central,
        Collector(xdc.url("bj", MONITOR_USER), ["#"]) as at_bj,
        Collector(xdc.url("sh", MONITOR_USER), ["#"]) as at_sh,
        Collector(xdc.url("bj", a), topics.agent_subscriptions(a)) as agent_a,
        Collector(xdc.url("sh", c), topics.agent_subscriptions(c)) as agent_c,
        Collector(xdc.url("central", MASTER_USER), []) as master,
    ):
        agent_a.publish(topics.status(a), register(a), retain=True)
        agent_a.publish(topics.heartbeat(a), b"hb-a", qos=0, retain=True)
        agent_a.publish(topics.results(a), b"result-a")
        agent_c.publish(topics.results(c), b"result-c")
        # Metadata must ride in the payload: the 3.1.1 bridge strips v5 properties.
        master.publish(topics.dc("bj").tasks(a), b"task-a", response_topic=f"{p}/x", correlation_data=b"1")
        master.publish(topics.dc("bj").control(a), b"kill-a")
        master.publish(topics.dc("sh").tasks(c), b"task-c")
        master.publish(topics.dc("sh").control(c), b"kill-c")

        got = agent_a.wait_for(lambda m: m.payload == b"task-a")[0]
        assert got.topic == topics.tasks(a)
        assert (got.response_topic, got.correlation_data) == (None, None)
        agent_a.wait_for(lambda m: m.payload == b"kill-a")
        agent_c.wait_for(lambda m: m.payload == b"kill-c")
        at_central.wait_for(lambda m: m.payload in (b"result-a", b"result-c"), count=2)
        at_bj.wait_for(lambda m: m.payload == b"kill-a")
        at_sh.wait_for(lambda m: m.payload == b"kill-c")

        assert [m.payload for m in by_topic(at_central, topics.dc("bj").status(a))] == [register(a)]
        assert [m.payload for m in by_topic(at_central, topics.dc("bj").results(a))] == [b"result-a"]
        assert [m.payload for m in by_topic(at_central, topics.dc("sh").results(c))] == [b"result-c"]
        assert not by_topic(at_central, topics.status(a)), "an edge's agent leaked into central's plain namespace"
        # Each edge: its own agents' plain topics only, never the other datacenter's, never dc/...
        assert {m.topic for m in at_bj.messages} <= {topics.status(a), topics.heartbeat(a), topics.results(a),
                                                     topics.tasks(a), topics.control(a)}
        assert {m.payload for m in at_bj.messages} >= {b"task-a", b"kill-a", b"result-a"}
        assert {m.topic for m in at_sh.messages} <= {topics.results(c), topics.tasks(c), topics.control(c)}
        assert {m.payload for m in at_sh.messages} >= {b"task-c", b"kill-c", b"result-c"}

    # A master connecting later finds the agent's registration and heartbeat retained.
    with Collector(xdc.url("central", MASTER_USER), [f"{p}/dc/+/agents/+/+"]) as late:
        found = late.wait_for(lambda m: m.retain, count=2)
        assert {(m.topic, m.payload) for m in found} == {
            (topics.dc("bj").status(a), register(a)),
            (topics.dc("bj").heartbeat(a), b"hb-a"),
        }
        info = topics.parse(found[0].topic)
        assert (info.dc, info.agent_id) == ("bj", a)


def test_a_round_trip_through_the_bridges_is_not_held_by_nagle(xdc, topics):
    """One bridge connection per direction: with both directions on one connection, each
    reply waited ~40 ms (delayed ACK x Nagle on the bridge's outgoing socket)."""
    a = xdc.add_agent("bj")
    xdc.wait_reloaded("bj", a)
    echo: list[MqttTransport] = []
    agent = MqttTransport(xdc.url("bj", a), client_id="echo", subscriptions=[(topics.tasks(a), 1)], manual_ack=False,
                          on_message=lambda m: echo[0].publish(topics.results(a), m.payload),
                          clean_start=True, session_expiry=0)
    echo.append(agent)
    agent.start(connect_timeout=10)
    try:
        assert agent.wait_connected(10)
        with Collector(xdc.url("central", MASTER_USER), [topics.dc("bj").results(a)]) as master:
            master.publish(topics.dc("bj").tasks(a), b"warm-up")
            master.wait_for(lambda m: m.payload == b"warm-up")
            rtts = []
            for i in range(40):
                payload = f"ping-{i}".encode()
                t0 = time.perf_counter()
                master.transport.publish(topics.dc("bj").tasks(a), payload)
                master.wait_for(lambda m, p=payload: m.payload == p)
                rtts.append(time.perf_counter() - t0)
        median = sorted(rtts)[len(rtts) // 2]
        assert median < 0.020, f"median round trip {median * 1000:.1f} ms"
    finally:
        agent.stop()


WILL_CLIENT = """
import sys, time
from mschedule_agent.transport import MqttTransport, Will
url, agent_id, status_topic, will, online = sys.argv[1:6]
t = MqttTransport(url, client_id="mschedule-agent-" + agent_id, clean_start=True, session_expiry=0,
                  keepalive=5, will=Will(status_topic, will.encode(), delay=1))
t.start(connect_timeout=10)
assert t.publish(status_topic, online.encode(), retain=True).wait(10)
print("online", flush=True)
time.sleep(120)
"""


def test_an_agents_last_will_crosses_the_bridge(xdc, topics, tmp_path):
    a = xdc.add_agent("bj")
    xdc.wait_reloaded("bj", a)
    will = protocol.encode(protocol.Offline(id=a))
    status_at_central = topics.dc("bj").status(a)
    with Collector(xdc.url("central", MASTER_USER), [status_at_central]) as master:
        agent = Proc([sys.executable, "-c", WILL_CLIENT, xdc.url("bj", a), a, topics.status(a), will.decode(),
                      register(a).decode()], log_path=tmp_path / "will-client.log")
        with agent:
            assert agent.wait_for_log("online", 20), agent.log()
            master.wait_for(lambda m: m.payload == register(a))
            agent.kill9()
        master.wait_for(lambda m: m.payload == will, timeout=20)
    with Collector(xdc.url("central", MONITOR_USER), [status_at_central]) as late:
        assert [m.payload for m in late.wait_for(lambda m: m.retain)] == [will]


def test_a_dead_edge_shows_in_the_bridge_state_and_leaves_stale_online_statuses(xdc, topics):
    """The master cannot trust retained statuses of a dead datacenter: it must use the
    bridge state (and heartbeat age)."""
    c = xdc.add_agent("sh")
    xdc.wait_reloaded("sh", c)
    with Collector(xdc.url("sh", c), []) as agent_c:
        agent_c.publish(topics.status(c), register(c), retain=True)
    with Collector(xdc.url("central", MONITOR_USER), [topics.dc("sh").status(c)]) as m:
        m.wait_for(lambda m: m.payload == register(c))
    seen = len(xdc.bridge_states("sh"))
    xdc.edges["sh"].broker.kill()
    xdc.wait_bridge("sh", up=False, after=seen, timeout=40)
    assert xdc.bridge_states("bj")[-1] == b"1", "the other datacenter's bridge is unaffected"
    with Collector(xdc.url("central", MONITOR_USER), [topics.dc("sh").status(c)]) as late:
        assert [m.payload for m in late.wait_for(lambda m: m.retain)] == [register(c)], "stale 'online' remains"
    seen = len(xdc.bridge_states("sh"))
    xdc.edges["sh"].broker.start()
    xdc.wait_bridge("sh", up=True, after=seen, timeout=40)


class Inbox:
    """A client with a persistent session (like an agent or the master) counting what it gets."""

    def __init__(self, url: str, subscriptions: list[str]) -> None:
        self.payloads: list[bytes] = []
        self._cond = threading.Condition()
        self.transport = MqttTransport(url, client_id=f"inbox-{uuid.uuid4().hex[:8]}",
                                       subscriptions=[(t, 1) for t in subscriptions], on_message=self._on_message,
                                       manual_ack=False)

    def _on_message(self, m: Incoming) -> None:
        with self._cond:
            self.payloads.append(m.payload)
            self._cond.notify_all()

    def __enter__(self) -> Inbox:
        self.transport.start(connect_timeout=10)
        assert self.transport.wait_connected(10) and self.transport.wait_subscribed(10)
        return self

    def __exit__(self, *exc) -> None:
        self.transport.stop()

    def wait_all(self, expected: set[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not expected <= set(self.payloads):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(expected - set(self.payloads))} of {len(expected)} never arrived")
                self._cond.wait(left)


def test_tasks_queued_at_central_survive_a_10s_edge_cut(xdc, topics):
    n = 300
    a = xdc.add_agent("bj")
    xdc.wait_reloaded("bj", a)
    edge = xdc.edges["bj"].broker
    with Inbox(xdc.url("bj", a), topics.agent_subscriptions(a)) as agent_a, \
            Collector(xdc.url("central", MASTER_USER), []) as master:
        seen = len(xdc.bridge_states("bj"))
        cut_at = time.monotonic()
        edge.stop()
        xdc.wait_bridge("bj", up=False, after=seen)
        sent = [f"task-{i}".encode() for i in range(n)]
        for payload in sent:
            master.publish(topics.dc("bj").tasks(a), payload)
        time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))  # the cut itself, not a synchronisation
        edge.start()
        xdc.wait_bridge("bj", up=True, after=seen, timeout=40)
        agent_a.wait_all(set(sent), timeout=60)
        first_copies = list(dict.fromkeys(agent_a.payloads))
        assert first_copies == sent, "tasks arrived out of order"


def test_results_queued_at_the_edge_survive_a_10s_central_cut(xdc, topics):
    n = 300
    a = xdc.add_agent("bj")
    xdc.wait_reloaded("bj", a)
    central = xdc.central.broker
    with Inbox(xdc.url("central", MONITOR_USER), [topics.dc("bj").results(a)]) as master, \
            Collector(xdc.url("bj", a), []) as agent_a:
        central.stop()  # its snapshot keeps the master's session and subscription
        cut_at = time.monotonic()
        sent = [f"result-{i}".encode() for i in range(n)]
        for payload in sent:
            agent_a.publish(topics.results(a), payload)
        time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))  # the cut itself
        central.start()
        master.wait_all(set(sent), timeout=60)
        assert list(dict.fromkeys(master.payloads)) == sent, "results arrived out of order"
