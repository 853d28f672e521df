"""The agent's optional Prometheus endpoint (``--metrics HOST:PORT``, off by default).

Imported only when enabled: prometheus_client and its HTTP server would cost an idle
agent's RSS otherwise. Values are read from the agent at each scrape (no hooks in its hot
paths): tasks finished by state, failures, the queue of accepted tasks waiting for a
slot, the running scripts, the results waiting for the master's ``result_ack``; plus the
client's process metrics (CPU, RSS, open fds).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        a = self.agent
        finished = dict(a.finished)
        run = CounterMetricFamily(
            "mschedule_agent_tasks_finished", "Tasks this agent ran to an end, by state", labels=["state"]
        )
        for state, n in sorted(finished.items()):
            run.add_metric([state], n)
        yield run
        failed = sum(n for state, n in finished.items() if state != "SUCCEED")
        yield CounterMetricFamily(
            "mschedule_agent_tasks_failed", "Tasks that ended in any state but SUCCEED", value=failed
        )
        yield GaugeMetricFamily(
            "mschedule_agent_queue_length", "Accepted tasks waiting for a free slot", value=a.queued_count()
        )
        yield GaugeMetricFamily("mschedule_agent_running", "Scripts running now", value=len(a.running_ids()))
        yield GaugeMetricFamily(
            "mschedule_agent_outbox", "Results waiting for the master's result_ack", value=len(a.outbox_ids())
        )


def serve(agent: Agent, address: str) -> CollectorRegistry:
    """Serve ``/metrics`` on ``HOST:PORT`` from a daemon thread; raises OSError if the port is taken."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    registry.register(AgentCollector(agent))
    start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    log.info("metrics on http://%s/metrics", address)
    return registry
