"""SIGTERM ends an agent within a bounded time even when its broker is gone (issue 23):
running scripts are killed and their results kept in the outbox for the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from harness.agentproc import start_agent
from harness.mqtt import Collector
from mschedule_agent.daemon import FAREWELL_WAIT
from mschedule_agent.protocol import Offline, Result, Started, Task, Topics, decode, encode

KILL_GRACE = 1.0
#: What the daemon documents: kill grace + FAREWELL_WAIT + about a second (here with margin
#: for a loaded test machine).
BOUND = KILL_GRACE + FAREWELL_WAIT + 3.0


def _is(cls, **fields):
    def pred(m):
        try:
            x = decode(m.payload)
        except Exception:
            return False
        return isinstance(x, cls) and all(getattr(x, k) == v for k, v in fields.items())

    return pred


def test_sigterm_with_a_frozen_broker_ends_the_agent_in_bounded_time_and_keeps_the_result(own_broker, prefix,
                                                                                          tmp_path):
    topics = Topics(prefix)
    agent = start_agent(tmp_path / "a", own_broker.url, prefix)
    aid = agent.agent_id
    frozen = False
    try:
        with Collector(own_broker.url, [topics.results(aid)]) as c:
            c.publish(topics.tasks(aid), encode(Task(id="long-1", script=b"exec sleep 60", kill_grace=KILL_GRACE)))
            c.wait_for(_is(Started, id="long-1"), 15)
        os.kill(own_broker.proc.pid, signal.SIGSTOP)  # the broker is there but answers nothing
        frozen = True
        t0 = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        try:
            rc = agent.proc.wait(30)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
        assert rc == 0, agent.log()[-2000:]
        assert took <= BOUND, f"the agent took {took:.1f} s to stop (bound {BOUND} s)"
        assert "disconnecting with the last will" in agent.log()
        os.kill(own_broker.proc.pid, signal.SIGCONT)
        frozen = False
        with Collector(own_broker.url, [topics.results(aid), topics.status(aid)]) as c:
            # The will announced the agent offline; the killed script's result waits in the outbox.
            c.wait_for(_is(Offline), 15)
            agent.proc = None
            agent = start_agent(tmp_path / "a", own_broker.url, prefix)
            (res,) = c.wait_for(_is(Result, id="long-1"), 20)
        result = decode(res.payload)
        assert result.state == "KILLED" and "shutdown" in (result.error or ""), result
    finally:
        if frozen:
            os.kill(own_broker.proc.pid, signal.SIGCONT)
        agent.stop()
