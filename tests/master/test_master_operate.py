"""Running the master for months: /metrics, /healthz and /readyz of a real master process
on a real broker, with real agents."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.fleet import Fleet, start_master
from harness.procs import wait_until


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(), e.headers.get("Content-Type", "")


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client's own parser."""
    status, body, ctype = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def fleet(broker, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    with Fleet(tmp_path, broker.url, prefix, agents=2) as f:
        yield f


def test_metrics_parse_and_their_counters_move_with_a_real_rollout(fleet):
    base = fleet.master.http_url
    before = scrape(base)
    assert value(before, "mschedule_agents_online", dc="") == 2 and value(before, "mschedule_agents_known", dc="") == 2
    assert value(before, "process_resident_memory_bytes") > 0
    task_id = fleet.submit(["all"], "echo hi; exit $MSCHEDULE_TEST_AGENT", parallel=2)
    assert fleet.wait_task(task_id)["state"] == "FAILED"
    after = scrape(base)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mschedule_targets_finished_total", state="SUCCEED") == 1
    assert moved("mschedule_targets_finished_total", state="FAILED") == 1
    assert moved("mschedule_submit_to_dispatch_seconds_count") == 2
    assert moved("mschedule_dispatch_to_result_seconds_count") == 2
    assert moved("mschedule_mqtt_messages_received_total") >= 7  # submit, 2 x (ack, started, result)
    assert moved("mschedule_mqtt_messages_published_total") >= 5  # reply, 2 tasks, 2 result_acks, summary
    assert moved("mschedule_store_commit_seconds_count") >= 3
    assert value(after, "mschedule_tasks", state="FAILED") == 1
    # the inbox drains: a live output message may still come in after the summary (another topic)
    deadline = time.monotonic() + 10
    while value(after, "mschedule_inbox_depth") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        after = scrape(base)
    assert value(after, "mschedule_inbox_depth") == 0


def test_healthz_and_readyz_need_no_token(fleet):
    status, body, _ = get(fleet.master.http_url + "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, body, _ = get(fleet.master.http_url + "/readyz")
    assert status == 200 and json.loads(body) == {
        "ready": True,
        "checks": {"broker": "ok", "store": "ok", "inbox": "ok"},
    }


def test_readyz_is_unready_while_the_broker_is_down_and_ready_when_it_returns(own_broker, tmp_path, prefix):
    master = start_master(tmp_path / "master", own_broker.url, prefix)
    try:
        url = master.http_url + "/readyz"
        assert get(url)[0] == 200
        own_broker.stop()
        wait_until(lambda: get(url)[0] == 503, timeout=20, what="readyz to go unready")
        doc = json.loads(get(url)[1])
        assert (
            doc["ready"] is False
            and doc["checks"]["broker"].startswith("not connected")
            and doc["checks"]["store"] == "ok"
        )
        assert get(master.http_url + "/healthz")[0] == 200  # alive all along: no restart wanted
        own_broker.start()
        wait_until(lambda: get(url)[0] == 200, timeout=30, what="readyz to be ready again")
    finally:
        master.stop()


def test_json_logs_are_one_object_per_line_with_stable_fields(broker, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    with Fleet(tmp_path, broker.url, prefix, agents=1, master_flags={"log_format": "json"}) as fleet:
        task_id = fleet.submit(["all"], "exit 3")
        assert fleet.wait_task(task_id)["state"] == "FAILED"
        agent_id = fleet.agent_ids[0]
        wait_until(
            lambda: f'"task_id": "{task_id}", "state": "FAILED", "duration"' in fleet.master.log(), what="the end"
        )
        lines = [json.loads(line) for line in fleet.master.log().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(doc) for doc in lines)
    target = [
        d for d in lines if d.get("task_id") == task_id and d.get("agent_id") == agent_id and d.get("state") == "FAILED"
    ]
    task = [d for d in lines if d.get("task_id") == task_id and "agent_id" not in d and d.get("state") == "FAILED"]
    assert len(target) == 1 and target[0]["duration"] >= 0
    assert (
        len(task) == 1 and task[0]["duration"] >= 0 and task[0]["msg"].startswith(f"task {task_id}: RUNNING -> FAILED")
    )


def test_text_logs_carry_the_same_fields_as_key_value_pairs():
    import logging

    from mschedule_master.logs import JsonFormatter, KeyValueFormatter

    record = logging.LogRecord("mschedule_master.engine", logging.INFO, __file__, 1, "task %s ended", ("t1",), None)
    record.task_id, record.state, record.duration = "t1", "SUCCEED", 1.23456
    assert KeyValueFormatter().format(record).endswith("task t1 ended task_id=t1 state=SUCCEED duration=1.235")
    doc = json.loads(JsonFormatter().format(record))
    assert (doc["msg"], doc["task_id"], doc["state"], doc["duration"], doc["level"]) == (
        "task t1 ended",
        "t1",
        "SUCCEED",
        1.23456,
        "INFO",
    )


def test_the_grafana_dashboard_uses_only_metrics_that_exist():
    import re
    from pathlib import Path

    from mschedule_agent.metrics import AgentCollector
    from mschedule_master.flow import Backlog
    from mschedule_master.metrics import Metrics

    doc = json.loads((Path(__file__).resolve().parents[2] / "deploy/grafana/mschedule.json").read_text())
    used = {
        m for p in doc["panels"] for t in p["targets"] for m in re.findall(r"\b((?:mschedule|process)_\w+)", t["expr"])
    }
    m = Metrics()
    from types import SimpleNamespace

    m.watch(
        agents=lambda: [SimpleNamespace(dc="bj", online=True)],
        task_states=lambda: {"SUCCEED": 1},
        inbox_depth=lambda: 0,
        delivery=lambda: Backlog(queued=0, in_flight=0, window=2000),
    )
    for hook in (lambda: m.target_finished("SUCCEED"), lambda: m.rejected("busy"), lambda: m.deleted("tasks", 1)):
        hook()  # labelled series exist once used

    class Idle:
        def __init__(self) -> None:
            self.finished = {"FAILED": 1}

        def queued_count(self):
            return 0

        running_ids = outbox_ids = list

    text = m.render().decode() + "".join(
        f"{s.name} {s.value}\n"
        for f in AgentCollector(Idle()).collect()
        for s in f.samples  # type: ignore[arg-type]
    )
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert used and used <= served, used - served


def test_the_per_target_histograms_read_as_prometheus_clients_own_would():
    """metrics._Histogram (one observation per dispatched copy, per stored result) exposes
    what prometheus_client's Histogram does with the same buckets (its ``_created`` aside)."""
    import random

    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from mschedule_master.metrics import LATENCY_BUCKETS, _Histogram

    theirs, ours = CollectorRegistry(), CollectorRegistry()
    a = Histogram("x_seconds", "doc", buckets=LATENCY_BUCKETS, registry=theirs)
    b = _Histogram("x_seconds", "doc", LATENCY_BUCKETS, registry=ours)
    rng = random.Random(7)
    for v in [0.0, 0.005, 0.0051, 1.0, 1800.0, 1e9] + [rng.expovariate(0.5) for _ in range(500)]:
        a.observe(v)
        b.observe(v)
    expected = [line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line]
    assert generate_latest(ours).decode().splitlines() == expected
