"""The master's Prometheus metrics (the official ``prometheus-client``), served at ``/metrics``.

The engine, store and service call one-line hooks (``metrics.redelivered()``); only this
module knows Prometheus. Each :class:`Metrics` has its own ``CollectorRegistry`` (no
process-wide singleton: tests run several masters in one process). Gauges that describe
state rather than events (agents, tasks by state, the inbox) are read at scrape time from
the sources the daemon hands to :meth:`Metrics.watch`.

Names follow the Prometheus conventions: ``mschedule_`` prefix, ``_total`` counters, base
units (``_seconds``).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mschedule_agent.protocol import REJECT_CODES

_le: Callable[[float], str] = floatToGoString  #: a bucket's bound as prometheus_client writes it (untyped there)

#: Latency buckets (seconds) from a loopback fleet to a slow cross-datacenter bridge.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
#: SQLite commits: an fsync of the write-ahead log is a few milliseconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Counters and histograms the master's code bumps, plus scrape-time gauges."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        if process:  # process_* (CPU, RSS, open fds) and python_* (version, GC)
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.targets_finished = Counter(
            "mschedule_targets_finished_total", "Targets that reached a final state, by state", ["state"], registry=r
        )
        self._finished_by_state: dict[str, Any] = {}  #: state -> its targets_finished child
        # once per dispatched copy and per stored result: _Histogram, not prometheus_client's
        self.submit_to_dispatch = _Histogram(
            "mschedule_submit_to_dispatch_seconds", "From a task's creation to a target's first dispatch",
            LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.dispatch_to_result = _Histogram(
            "mschedule_dispatch_to_result_seconds", "From a target's dispatch to its stored result",
            LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.redeliveries = Counter(
            "mschedule_redeliveries_total", "Task copies published again to unacked targets", registry=r
        )
        self.duplicate_results = Counter(
            "mschedule_duplicate_results_total",
            "Results dropped because the target's result was already stored",
            registry=r,
        )
        self.rejects = Counter(
            "mschedule_rejects_total", "Tasks agents refused, by reject code", ["reason"], registry=r
        )
        self.live_chunks = Counter(
            "mschedule_live_output_chunks_total",
            "Live output chunks from agents: stored, duplicate (a copy seen before), refused (no running "
            "target), gap (one before it was lost on the way)",
            ["outcome"],
            registry=r,
        )
        self.messages_in = Counter(
            "mschedule_mqtt_messages_received_total", "MQTT messages the master applied", registry=r
        )
        self.messages_out = Counter(
            "mschedule_mqtt_messages_published_total", "MQTT messages the master published", registry=r
        )
        self.commit = Histogram(
            "mschedule_store_commit_seconds", "SQLite commit time (with the WAL fsync when one is needed)",
            buckets=COMMIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.retention_deleted = Counter(
            "mschedule_retention_deleted_total", "Expired records deleted by retention, by kind", ["kind"], registry=r
        )
        self._state = _StateCollector()
        r.register(self._state)

    # ------------------------------------------------------------------ hooks (one line each at the call site)
    def dispatched(self, created_at: float, now: float, *, redeliver: bool) -> None:
        if redeliver:
            self.redeliveries.inc()
        else:
            self.submit_to_dispatch.observe(max(0.0, now - created_at))

    def result_stored(self, dispatched_at: float | None, now: float) -> None:
        if dispatched_at is not None:
            self.dispatch_to_result.observe(max(0.0, now - dispatched_at))

    def duplicate_result(self) -> None:
        self.duplicate_results.inc()

    def live_chunk(self, outcome: str) -> None:
        self.live_chunks.labels(outcome).inc()

    def rejected(self, code: str) -> None:
        self.rejects.labels(code if code in REJECT_CODES else "other").inc()

    def target_finished(self, state: str) -> None:
        child = self._finished_by_state.get(state)
        if child is None:  # labels() looks the child up anew each time: once per state here
            child = self._finished_by_state[state] = self.targets_finished.labels(state)
        child.inc()

    def received(self, n: int = 1) -> None:
        self.messages_in.inc(n)

    def published(self, n: int = 1) -> None:
        self.messages_out.inc(n)

    def committed(self, seconds: float) -> None:
        self.commit.observe(seconds)

    def deleted(self, kind: str, n: int) -> None:
        if n:
            self.retention_deleted.labels(kind).inc(n)

    # ------------------------------------------------------------------ scrape-time state
    def watch(
        self,
        *,
        agents: Callable[[], Iterable[Any]] | None = None,
        task_states: Callable[[], dict[str, int]] | None = None,
        inbox_depth: Callable[[], int] | None = None,
        leadership: Callable[[], tuple[bool, int]] | None = None,
        delivery: Callable[[], Any] | None = None,
    ) -> None:
        """Sources read at each scrape (on the master's loop thread, as the API runs).
        ``leadership``: (this master leads, the database's epoch), for HA masters.
        ``delivery``: flow control's :class:`~.flow.Backlog` (queued, in flight, window)."""
        s = self._state
        s.agents, s.task_states, s.inbox_depth, s.leadership, s.delivery = (
            agents or s.agents,
            task_states or s.task_states,
            inbox_depth or s.inbox_depth,
            leadership or s.leadership,
            delivery or s.delivery,
        )

    def render(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def counting(self, transport: Any) -> Any:
        """``transport`` with every publish counted in ``mschedule_mqtt_messages_published_total``."""
        return _CountingTransport(transport, self)


class _Histogram(Collector):
    """A histogram observed on a per-target path (each dispatched copy, each stored result):
    a bisect into plain counters. prometheus_client's Histogram takes a lock for its sum and
    one for the bucket it finds by walking the bounds (~2 us per copy of a fan-out). Observed
    from the engine's thread only; a scrape reads the counters as they stand, as it reads
    prometheus_client's (whose sum and buckets are not read atomically together either).
    Exposed as prometheus_client's is: ``_bucket`` (cumulative, ``le``), ``_count``, ``_sum``."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], *, registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = [*sorted(buckets), math.inf]
        self._les = [_le(b) for b in self._bounds]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1  # the first bound >= amount, as le means
        self._sum += amount

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for le, n in zip(self._les, counts, strict=True):
            cumulative += n
            buckets.append((le, float(cumulative)))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.agents: Callable[[], Iterable[Any]] | None = None
        self.task_states: Callable[[], dict[str, int]] | None = None
        self.inbox_depth: Callable[[], int] | None = None
        self.leadership: Callable[[], tuple[bool, int]] | None = None
        self.delivery: Callable[[], Any] | None = None

    def describe(self) -> list[Metric]:
        return []  # values only at collect(): nothing to check for name clashes up front

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.agents is not None:
            known = GaugeMetricFamily("mschedule_agents_known", "Agents the master knows, by datacenter", labels=["dc"])
            online = GaugeMetricFamily("mschedule_agents_online", "Agents online, by datacenter", labels=["dc"])
            by_dc: dict[str, list[int]] = {}
            for a in self.agents():
                n = by_dc.setdefault(a.dc or "", [0, 0])
                n[0] += 1
                n[1] += int(a.online)
            for dc, (k, o) in sorted(by_dc.items()):
                known.add_metric([dc], k)
                online.add_metric([dc], o)
            yield known
            yield online
        if self.task_states is not None:
            tasks = GaugeMetricFamily("mschedule_tasks", "Tasks in the database, by state", labels=["state"])
            for state, count in sorted(self.task_states().items()):
                tasks.add_metric([state], count)
            yield tasks
        if self.inbox_depth is not None:
            yield GaugeMetricFamily(
                "mschedule_inbox_depth", "MQTT messages received, not yet applied", value=self.inbox_depth()
            )
        if self.delivery is not None:
            b = self.delivery()
            yield GaugeMetricFamily(
                "mschedule_dispatch_queued", "Task copies waiting in the master's own queue (flow control)", value=b.queued
            )
            yield GaugeMetricFamily(
                "mschedule_dispatch_in_flight", "Task copies published, not yet acknowledged by the broker (PUBACK)",
                value=b.in_flight,
            )  # fmt: skip
            yield GaugeMetricFamily(
                "mschedule_dispatch_window", "Task copies allowed in flight at once (dispatch_window)", value=b.window
            )
            yield GaugeMetricFamily(
                "mschedule_dispatch_throttled", "1 while copies wait because the window is full", value=int(b.throttled)
            )
        if self.leadership is not None:
            leading, epoch = self.leadership()
            yield GaugeMetricFamily("mschedule_master_leader", "1 on the HA master that leads, 0 on standbys", value=int(leading))
            yield GaugeMetricFamily("mschedule_master_leadership_epoch", "The leadership epoch in the database", value=epoch)


class _CountingTransport:
    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def publish(self, *args: Any, **kw: Any) -> Any:
        pub = self._inner.publish(*args, **kw)
        self._metrics.published()
        return pub

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
