"""The agent's optional /metrics endpoint (``--metrics HOST:PORT``) on a real agent."""

from __future__ import annotations

import urllib.request
import uuid

from prometheus_client.parser import text_string_to_metric_families

from harness.broker import free_port
from harness.fleet import Fleet
from harness.procs import wait_until
from mschedule_agent import config
from mschedule_agent.errors import ConfigError


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_an_agent_with_metrics_counts_its_tasks_and_shows_its_queue(broker, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    with Fleet(tmp_path, broker.url, prefix, agents=1, agent_flags={"metrics": address}) as fleet:
        url = f"http://{address}/metrics"
        before = scrape(url)
        assert before[("mschedule_agent_queue_length", ())] == 0 and before[("mschedule_agent_running", ())] == 0
        assert before[("process_resident_memory_bytes", ())] > 0
        for script in ("true", "exit 3"):
            fleet.wait_task(fleet.submit(["all"], script))
        # the summary can come before the result_ack reaches the agent and empties its outbox
        after = wait_until(lambda: (m := scrape(url))[("mschedule_agent_outbox", ())] == 0 and m, 10,
                           what="the outbox emptied by the result_ack")  # fmt: skip
    assert after[("mschedule_agent_tasks_finished_total", (("state", "SUCCEED"),))] == 1
    assert after[("mschedule_agent_tasks_finished_total", (("state", "FAILED"),))] == 1
    assert after[("mschedule_agent_tasks_failed_total", ())] == 1
    assert after[("mschedule_agent_outbox", ())] == 0


def test_metrics_are_off_by_default_and_need_host_and_port():
    assert config.load([], env={}).metrics is None
    assert config.load(["--metrics", "127.0.0.1:9101"], env={}).metrics == "127.0.0.1:9101"
    for bad in ("9101", "host:", "host:99999"):
        try:
            config.load(["--metrics", bad], env={})
        except ConfigError as e:
            assert "metrics" in str(e)
        else:
            raise AssertionError(f"{bad!r} accepted")
