"""The master's ``result_ack`` goes out at QoS 0 (docs/protocol.md, "result_ack"): one
published while its agent is away is dropped by the broker, not queued in the agent's
persistent session. What it costs, with a real broker, master and agent: one more copy of the
result from the agent when it is back, acknowledged and counted as a duplicate; the verdict
stored once, the script run once."""

from __future__ import annotations

import sqlite3
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path

import orjson

from harness.fleet import Fleet, runs
from harness.mqtt import Collector
from harness.procs import Proc, stopped, wait_until
from mschedule_agent import protocol
from mschedule_agent.protocol import Topics


def _pid(proc: Proc) -> int:
    assert proc.pid is not None
    return proc.pid


def _outbox(state_dir: Path) -> list[str]:
    """The ids whose result the agent's ledger keeps waiting for a ``result_ack``."""
    with closing(sqlite3.connect(f"file:{state_dir / 'ledger.sqlite3'}?mode=ro", uri=True, timeout=5)) as c, c:
        rows = c.execute("select id from tasks where result is not null and result_acked = 0 order by seq")
        return [r[0] for r in rows]


def _events(db: Path, kind: str, task_id: str) -> list[dict]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c, c:
        rows = c.execute("select data from events where kind = ? and task_id = ?", (kind, task_id)).fetchall()
    return [orjson.loads(r[0]) for r in rows]


def _duplicate_results(fleet: Fleet) -> float:
    assert fleet.master is not None and fleet.master.http_url
    with urllib.request.urlopen(fleet.master.http_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    (value,) = [line.split()[1] for line in lines if line.startswith("mschedule_duplicate_results_total ")]
    return float(value)


def _copies_if_all_acknowledged(wire: Collector, task_id: str) -> int:
    """The copies of ``task_id``'s result seen on the wire when the master has published a
    ``result_ack`` for each of them, else 0 (it acknowledges every copy, after its commit)."""
    seen = [protocol.decode(m.payload) for m in list(wire.messages)]
    copies = sum(m.TYPE == "result" and m.id == task_id for m in seen)
    acks = sum(m.TYPE == "result_ack" and m.id == task_id for m in seen)
    return copies if copies == acks else 0


def test_a_result_ack_lost_while_the_agent_is_away_costs_one_more_copy_of_the_result(broker, prefix, tmp_path):
    ran, gate = tmp_path / "ran", tmp_path / "gate"
    # The script runs to its end only once the test has frozen the master (bounded: 20 s).
    script = f"for i in $(seq 400); do [ -e {gate} ] && break; sleep 0.05; done; echo once >> {ran}; echo hi"
    with Fleet(tmp_path, broker.url, prefix, agents=1) as fleet:
        master, agent = fleet.master, fleet.agents[0]
        assert master is not None
        agent_id = agent.agent_id
        topics = Topics(prefix)
        with Collector(broker.url, [topics.results(agent_id), topics.control(agent_id)]) as wire:
            task_id = fleet.submit([agent_id], script)
            fleet.wait_progress(task_id, lambda p: p.get("target_state") == "RUNNING")

            # 1. The master is deaf when the result comes: the result waits for it, unread.
            with stopped(_pid(master)):
                gate.touch()
                wire.wait_for(lambda m: protocol.decode(m.payload).TYPE == "result", 20)
                assert agent.stop() == 0  # SIGTERM: a clean offline, the result still unacknowledged
                assert _outbox(agent.workdir) == [task_id]

            # 2. The master stores the result and acknowledges each copy while the agent is away.
            wait_until(lambda: fleet.task(task_id)["targets"][agent_id]["state"] == "SUCCEED", 15, what="SUCCEED")
            wait_until(lambda: _copies_if_all_acknowledged(wire, task_id), 15, what="a result_ack for each copy")
            assert _outbox(agent.workdir) == [task_id]  # the agent heard none of them

            # 3. Back with the master deaf again: the broker had kept no ack for it. A kill
            # for an unknown task, on the control topic after every message the session might
            # hold, is the barrier: once the agent has answered it (KILLED, never ran), a
            # queued ack would have been handled before it.
            with stopped(_pid(master)):
                offset = len(agent.log())
                agent.start()
                agent.wait_online(20, after=offset)
                barrier = uuid.uuid4().hex
                wire.publish(topics.control(agent_id), protocol.encode(protocol.Kill(id=barrier, reason="barrier")))
                wire.wait_for(lambda m: m.topic == topics.results(agent_id) and barrier.encode() in m.payload, 15)
                assert _outbox(agent.workdir) == [task_id, barrier]  # the ack really was lost

            # 4. The agent's next copy is acknowledged: its outbox empties, nothing else changes.
            wait_until(lambda: _outbox(agent.workdir) == [], 15, interval=0.1, what="the agent's outbox empty")
            copies = wait_until(lambda: _copies_if_all_acknowledged(wire, task_id), 15, what="a result_ack for each")
            task = fleet.task(task_id)
            target = task["targets"][agent_id]
            assert (task["state"], target["state"], target["code"]) == ("SUCCEED", "SUCCEED", 0)
            assert target["output"] == "hi\n"
            assert (task["revised_at"], target["revised_at"], target["revised_from"]) == (None, None, None)
            assert not _events(master.db, "revised", task_id)
            late = _events(master.db, "late_result", task_id)
            assert late and all(not e["stored"] for e in late)  # the copies after the verdict changed nothing
            assert copies >= 2 and _duplicate_results(fleet) == copies - 1  # stored once, every other copy a duplicate
            assert runs(ran) == ["once"]
