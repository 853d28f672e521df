"""Reads off the hot path: a counts poll reads no output bytes, and API reads run in
reader threads on read-only connections."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from mschedule_agent import protocol
from mschedule_master import models
from mschedule_master.reads import Reads
from mschedule_master.states import TargetState, TaskState
from mschedule_master.store import Store

N_TARGETS = 2000
OUTPUT = b"x" * 32 * 1024


def _task(task_id: str) -> models.Task:
    return models.Task(
        id=task_id, name="big", script=b"yes | head -c 32k", targets_spec=["all"], timeout=0, parallel="100%",
        fail_rate=None, fail_count=-1, on_abort="kill", env={}, cwd=None, output_cap=None, delivery_timeout=60.0,
        state=TaskState.RUNNING, reason="", created_at=1.0, finished_at=None, counts={}, target_count=N_TARGETS,
    )  # fmt: skip


@pytest.fixture(scope="module")
def big_db(tmp_path_factory):
    """A task of 2,000 targets, each with 32 KiB of stdout and 1 KiB of stderr stored."""
    path = str(tmp_path_factory.mktemp("reads") / "master.db")
    store = Store(path)
    agents = [f"agent-{i:04d}" for i in range(N_TARGETS)]
    store.insert_task(_task("big"), agents)
    with store.db():
        for a in agents:
            result = protocol.Result(id="big", agent_id=a, state="SUCCEED", code=0, output=OUTPUT, stderr=b"e" * 1024)
            store.record_result("big", a, result, 2.0)
        store.save_snapshots("big", [])
        store._conn.execute("update targets set state=? where task_id='big'", (TargetState.SUCCEED.value,))
    yield path, store
    store.close()


def _output_bytes(task: models.Task) -> int:
    assert task.targets is not None
    return sum(len(t.stdout) + len(t.stderr) for t in task.targets)


def test_a_counts_poll_of_a_2000_target_task_reads_no_output_bytes(big_db):
    _, store = big_db
    poll = store.get_task("big", outputs=False)
    assert poll.counts == {"SUCCEED": N_TARGETS} and len(poll.targets) == N_TARGETS
    assert _output_bytes(poll) == 0
    assert {(t.state, t.code, t.stdout_bytes, t.stderr_bytes) for t in poll.targets} == {
        (TargetState.SUCCEED, 0, len(OUTPUT), 1024)
    }
    full = store.get_task("big")  # the same read with outputs does carry them: the assertion can fail
    assert _output_bytes(full) == N_TARGETS * (len(OUTPUT) + 1024)


def test_reads_run_in_reader_threads_on_read_only_connections(big_db):
    path, _ = big_db
    reads = Reads(path)
    try:

        def probe(store):
            task = store.get_task("big", outputs=False)
            return threading.current_thread().name, _output_bytes(task), task.counts

        name, output_bytes, counts = asyncio.run(reads.run(probe))
        assert name.startswith("mschedule-read") and output_bytes == 0 and counts == {"SUCCEED": N_TARGETS}
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            asyncio.run(reads.run(lambda store: store.set_target_reason("big", "agent-0000", "nope")))
    finally:
        reads.close()


def test_a_tail_read_brings_one_byte_more_than_shown_so_a_cut_is_still_seen(big_db):
    _, store = big_db
    task = store.get_task("big", tail=100)
    assert {(t.stdout, t.stderr) for t in task.targets} == {(OUTPUT[-101:], b"e" * 101)}
    short = store.get_task("big", tail=2000)
    assert {len(t.stderr) for t in short.targets} == {1024}  # shorter than the tail: all of it


def test_identical_reads_in_flight_share_one_answer_until_the_task_changes():
    from types import SimpleNamespace

    from mschedule_master.coalesce import Coalescer

    subscribers: list = []

    def subscribe(cb):
        subscribers.append(cb)
        return lambda: subscribers.remove(cb)

    async def go():
        co, made = Coalescer(subscribe), []
        gate = asyncio.Event()

        async def make():
            n = len(made)
            made.append(n)
            await gate.wait()
            return f"answer {n}"

        async def settle():
            for _ in range(5):
                await asyncio.sleep(0)

        first = [asyncio.ensure_future(co.get("t1", "q", make)) for _ in range(3)]
        other = asyncio.ensure_future(co.get("t2", "q", make))  # another task: its own read
        await settle()
        assert len(made) == 2 and len(subscribers) == 1
        for cb in list(subscribers):
            cb(SimpleNamespace(task_id="t1"))  # t1 changed: later reads must not join the old one
        after = asyncio.ensure_future(co.get("t1", "q", make))
        await settle()
        gate.set()
        answers = await asyncio.gather(*first, other, after)
        assert made == [0, 1, 2] and answers == ["answer 0"] * 3 + ["answer 1", "answer 2"]
        assert subscribers == []  # listens only while something is in flight

    asyncio.run(go())
