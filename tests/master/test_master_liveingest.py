"""Live output on the master without a network (the Rig of conftest.py): what is stored,
what is told to the watchers, what the follow route makes of it, and the CLI's lines."""

from __future__ import annotations

from mschedule_agent.protocol import OutputChunk, OutputEnd, Result, Started
from mschedule_master.cli_live import Lines
from mschedule_master.follow import _Position, final_rest, skipped_line
from mschedule_master.liveoutput import Chunk, chunks_after
from mschedule_master.models import Target
from mschedule_master.states import TargetState


def running_task(rig, **kw) -> str:
    rig.register("a1", hostname="web-1")
    task_id = rig.submit(["a1"], **kw).task_id
    rig.from_agent("a1", Started(id=task_id, agent_id="a1", started_at=rig.clock()))
    return task_id


def chunk(task_id: str, seq: int, offset: int, data: bytes, stream: str = "stdout", skipped: int = 0) -> OutputChunk:
    return OutputChunk(id=task_id, agent_id="a1", seq=seq, stream=stream, offset=offset, data=data, skipped=skipped)


def send(rig, *msgs) -> None:
    rig.feed(*(rig.incoming(rig.topics.output("a1", m.id), m) for m in msgs))


def events(rig) -> list:
    seen: list = []
    rig.service.subscribe(seen.append)
    return seen


def test_a_chunk_is_stored_once_and_told_once_with_its_host(rig):
    task_id = running_task(rig)
    seen = events(rig)
    c = chunk(task_id, 0, 0, b"start\n")
    send(rig, c, c)
    send(rig, c)
    assert rig.service.live.stored == 1 and rig.service.live.duplicates == 2
    assert chunks_after(rig.store, task_id, "a1", "stdout", 0) == [Chunk("stdout", 0, 0, b"start\n")]
    out = [e for e in seen if e.kind == "output"]
    assert len(out) == 1
    assert out[0].data["data"] == "start\n" and out[0].data["hostname"] == "web-1" and out[0].data["encoding"] == "utf-8"


def test_non_utf8_bytes_are_told_as_base64(rig):
    task_id = running_task(rig)
    seen = events(rig)
    send(rig, chunk(task_id, 0, 0, b"\xff\xfe"))
    (ev,) = [e for e in seen if e.kind == "output"]
    assert (ev.data["data"], ev.data["encoding"]) == ("//4=", "base64")


def test_the_stored_live_output_keeps_the_head_and_the_latest_half_of_the_cap(rig):
    task_id = running_task(rig, output_cap=1000)
    for i in range(20):  # 20 chunks of 100 bytes: 2,000 bytes for a cap of 1,000
        send(rig, chunk(task_id, i, i * 100, bytes([65 + i]) * 100))
    kept = chunks_after(rig.store, task_id, "a1", "stdout", 0)
    assert sum(len(c.data) for c in kept) <= 1000
    assert [c.offset for c in kept] == [0, 100, 200, 300, 400, 1500, 1600, 1700, 1800, 1900]


def test_a_gap_not_explained_by_skipped_is_counted(rig):
    task_id = running_task(rig)
    send(rig, chunk(task_id, 0, 0, b"aaaa"), chunk(task_id, 2, 8, b"cccc"), chunk(task_id, 3, 20, b"dd", skipped=8))
    assert rig.service.live.gaps == 1  # seq 1 (4..8) lost; 12..20 was skipped by the agent, and said so


def test_chunks_of_a_target_with_its_result_are_refused_and_the_ended_targets_chunks_go(rig):
    task_id = running_task(rig)
    send(rig, chunk(task_id, 0, 0, b"start\n"))
    assert chunks_after(rig.store, task_id, "a1", "stdout", 0)
    rig.from_agent("a1", Result(id=task_id, agent_id="a1", state="SUCCEED", code=0, output=b"start\nend\n"))
    assert chunks_after(rig.store, task_id, "a1", "stdout", 0) == []
    send(rig, chunk(task_id, 1, 6, b"end\n"))  # late: the result is the record
    assert chunks_after(rig.store, task_id, "a1", "stdout", 0) == []


def test_output_for_an_unknown_task_or_another_agents_topic_is_dropped(rig):
    running_task(rig)
    send(rig, chunk("nosuchtask", 0, 0, b"x"))
    bad = chunk("t", 0, 0, b"x")
    rig.feed(rig.incoming(rig.topics.output("a2", "t"), bad))  # names a1 on a2's topic
    rig.feed(rig.incoming(rig.topics.output("a1", "t"), b"not json"))
    assert rig.service.live.stored == 0


def test_the_end_marker_is_told_to_the_watchers(rig):
    task_id = running_task(rig)
    seen = events(rig)
    sha = "0" * 64
    send(rig, OutputEnd(id=task_id, agent_id="a1", seq=1, stdout_bytes=6, stderr_bytes=0, stdout_sha256=sha,
                        stderr_sha256=sha))  # fmt: skip
    (ev,) = [e for e in seen if e.kind == "output_end"]
    assert ev.data["stdout_bytes"] == 6


def test_the_rest_of_a_truncated_result_marks_what_it_no_longer_holds():
    # cap 10: head 5 bytes (0..5), tail 5 bytes (15..20) of a 20-byte stream
    t = Target(task_id="t", agent_id="a", state=TargetState.SUCCEED, stdout=b"01234FGHIJ", stdout_bytes=20,
               stdout_truncated=True)  # fmt: skip
    assert final_rest(t, "stdout", 0) == b"01234" + skipped_line(10) + b"FGHIJ"
    assert final_rest(t, "stdout", 3) == b"34" + skipped_line(10) + b"FGHIJ"
    assert final_rest(t, "stdout", 17) == b"HIJ"
    whole = Target(task_id="t", agent_id="a", state=TargetState.SUCCEED, stdout=b"abc", stdout_bytes=3)
    assert final_rest(whole, "stdout", 1) == b"bc"


def test_a_follower_passes_agent_skips_at_once_and_waits_a_little_on_a_lost_chunk():
    at = _Position()
    assert at.take([Chunk("stdout", 0, 0, b"ab"), Chunk("stdout", 10, 8, b"kl")], 0.0) == b"ab" + skipped_line(8) + b"kl"
    assert at.pos == 12
    assert at.take([Chunk("stdout", 20, 0, b"uv")], 1.0) == b""  # 12..20 missing: wait
    assert at.take([Chunk("stdout", 20, 0, b"uv")], 2.5) == b""
    assert at.take([Chunk("stdout", 20, 0, b"uv")], 3.5) == skipped_line(8) + b"uv"


def test_the_cli_makes_whole_lines_per_target_and_keeps_the_latest():
    lines = Lines()
    got = lines.feed({"agent_id": "a1", "hostname": "web-1", "stream": "stdout", "offset": 0, "data": "one\ntw"})
    assert got == [("a1", "stdout", "one")]
    got = lines.feed({"agent_id": "a1", "stream": "stdout", "offset": 6, "data": "o\nthree"})
    assert got == [("a1", "stdout", "two")]
    assert lines.feed({"agent_id": "a1", "stream": "stdout", "offset": 6, "data": "o\nthree"}) == []  # seen
    assert lines.feed({"agent_id": "a1", "stream": "stdout", "offset": 20, "data": "x\n"}) == [
        ("a1", "stdout", "three"), ("a1", "stdout", "[mschedule: 7 bytes skipped]"), ("a1", "stdout", "x")]
    assert lines.finish() == []
    assert lines.prefixed("a1", "x") == "web-1: x" and dict(lines.latest) == {"a1": "x"}
    lines.feed({"agent_id": "a2", "stream": "stderr", "offset": 0, "data": "//4=", "encoding": "base64"})
    assert lines.finish("a2") == [("a2", "stderr", "\ufffd\ufffd")]


def test_live_chunks_are_counted_by_outcome_in_the_metrics(rig):
    task_id = running_task(rig)
    c = chunk(task_id, 0, 0, b"x")
    send(rig, c, c, chunk(task_id, 2, 9, b"y"), chunk("nosuchtask", 0, 0, b"z"))
    got = {s.labels["outcome"]: s.value for m in rig.engine.metrics.registry.collect() for s in m.samples
           if s.name == "mschedule_live_output_chunks_total"}  # fmt: skip
    assert got == {"stored": 2, "duplicate": 1, "gap": 1, "refused": 1}
