"""``mschedule-master``: wires the real clock, MQTT transport, store and HTTP API together.

One asyncio loop owns all state, and drives the MQTT connection too (no paho thread:
:mod:`mschedule_agent.asyncnet`). Each incoming message is appended to an inbox; the loop
drains the inbox in batches, each applied in one SQLite transaction, after which the
batch's publications go out and its messages are PUBACKed. A timer drives the rollouts'
deadlines and the registry's staleness sweep, and keeps the listening clock: deadlines run
only while the master is connected and caught up with what its broker queued
(docs/rollout.md, "The listening clock").

Only one master may own a database (an exclusive ``flock`` on ``<db>.lock``) and a broker
and prefix (a retained status on ``<prefix>/master/status`` with a last will, checked by a
challenge that only a live master can answer: see :mod:`.rivals`). Exit statuses
(docs/deploy.md): 0 stopped, 1 failed (a supervisor should restart it), 2 refused (bad
settings, another live master: restarting would not help).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import gc
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, TypeVarTuple

from mschedule_agent import memory, protocol
from mschedule_agent.asyncnet import AsyncioNetwork
from mschedule_agent.protocol import Topics
from mschedule_agent.transport import Incoming, MqttTransport, TransportError, Will

from . import config, sealing
from .dburl import is_postgres_url, redact
from .engine import Engine
from .errors import AlreadyRunning, ConfigError, MasterError, NotLeader, StoreError
from .ha import (
    KILLS_CHANNEL,
    SWEEP_INTERVAL,
    TASKS_CHANNEL,
    ServiceSwitch,
    Standby,
    on_notification,
    sweep,
    take_over_requests,
)
from .listening import ListeningClock
from .metrics import Metrics
from .probes import READY_BACKLOG, Ops
from .reads import Reads
from .registry import Registry
from .retention import Policy, Retention
from .rivals import RivalGuard, find_live_rival, status_payload
from .rollout import Timing
from .service import BRIDGE_STATE_TOPIC, MasterService
from .store import Store
from .submissions import ProgressPublisher

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

_R = TypeVar("_R")
_Ts = TypeVarTuple("_Ts")

#: Messages applied per transaction at most.
BATCH_MAX = 2000
#: A heartbeat (QoS 0) waits at most this long (seconds) in the inbox for others to share
#: its batch: 10,000 agents heartbeating every 5 s were 2,000 wake-ups and batches of one
#: a second. Any other message is drained at once (and takes the waiting heartbeats along).
LAZY_DRAIN = 0.05
#: Our QoS-1 publications awaiting the broker's PUBACK above which the inbox waits (paho has
#: 65,535 packet ids; task copies are bounded by dispatch_window, at most 30,000).
OUT_BACKLOG_MAX = 20_000
#: Seconds between two looks at that backlog while it is above OUT_BACKLOG_MAX.
BACKLOG_WAIT = 0.002
_IDLE, _LATER, _NOW = 0, 1, 2  #: a drain is not scheduled, is scheduled LAZY_DRAIN from now, is scheduled now
#: The inbox is "behind" when its oldest message waited this long (seconds) ...
BACKLOG_AGE = 0.5
#: ... and time-based verdicts wait for it to catch up, but no longer than this (seconds).
MAX_VERDICT_DEFER = 60.0
#: The timer wakes at least this often (seconds).
TICK_MAX = 0.5
#: Deaf spells shorter than this (seconds) count as listened: not worth moving every clock.
DEFER_MIN = 1.0
#: While listening, persist how far the listening clock got at most this often (seconds).
HEARD_PERSIST_EVERY = 1.0
#: Re-send the catch-up ping this often (seconds) while it has not come back.
SYNC_RESEND = 5.0
#: (HA) A standby tries to take the lead this often at most (seconds; lease / 5 when shorter).
POLL_LEAD = 0.5
#: While task copies are queued or in flight, look for the broker's PUBACKs this often (seconds).
FLOW_POLL = 0.01
#: How long "master ready" waits for the broker to grant the subscriptions (SUBACK).
SUBSCRIBE_WAIT = 30.0


def rollout_timing(s: config.Settings) -> Timing:
    """The rollouts' timings, as the settings give them."""
    return Timing(
        delivery_timeout=s.delivery_timeout, redeliver_interval=s.redeliver_interval, redeliver_max=s.redeliver_max,
        ack_grace=s.ack_grace, lost_grace=s.lost_grace, lost_max=s.lost_max, kill_resend=s.kill_resend,
    )  # fmt: skip


def setup_logging(level: str, fmt: str = "text") -> None:
    from . import logs

    logs.setup(level, fmt)


def acquire_lock(db: str) -> TextIO:
    """An exclusive lock on ``<db>.lock`` held for the process's life (the open file)."""
    path = Path(db + ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip() or "?"
        f.close()
        raise AlreadyRunning(
            f"another mschedule-master (pid {other}) owns the database {db}; refusing to start"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


class Daemon:
    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.instance = uuid.uuid4().hex
        self.started_at = time.time()
        self._inbox: collections.deque[Incoming] = collections.deque()
        self._arrivals: collections.deque[float] = collections.deque()  #: monotonic arrival of each inbox entry
        self._behind_since: float | None = None
        self._listening: ListeningClock | None = None
        self._synced = False  #: our catch-up ping came back: what the broker queued before it is applied
        self._sync_nonce = b""
        self._sync_sent_at = 0.0
        self._unsynced_since = time.time()
        self._heard_saved = 0.0
        self._drain_scheduled = _IDLE
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._network: AsyncioNetwork | None = None  #: drives the MQTT socket on the loop
        self.exit_code = EXIT_STOPPED
        #: HA masters on PostgreSQL (ha.py, leadership.py): None for one master on SQLite
        self.ha = is_postgres_url(settings.db)
        self._lead: Any = None  #: leadership.Leadership (imported with psycopg, HA only)
        self._notifications: Any = None  #: leadership.Notifications
        self._switch: ServiceSwitch | None = None
        self._metrics: Metrics | None = None
        self.ops: Ops | None = None
        self._next_sweep = 0.0

    async def run(self) -> int:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)

        runner = None
        if self.ha:  # HA masters: the database's advisory lock, not a broker challenge, says who runs
            from .pgstore import PgStore

            store: Store = PgStore(s.db, lease=s.lease)
            try:
                runner, led = await self._stand_by(store)
            except BaseException:
                await self._shutdown_standby(runner, store)
                raise
            if not led:
                await self._shutdown_standby(runner, store)
                return self.exit_code
        else:
            finished, other = await self._unless_stopped(find_live_rival, s, self.topics, self.instance)
            if not finished:
                log.info("stopped before the broker could be reached")
                return EXIT_STOPPED
            if other is not None:
                log.error(
                    "another mschedule-master (client id %s, pid %s on %s) is online on this broker and prefix and "
                    "answered a challenge; refusing to start", other.client_id, other.pid, other.host,
                )  # fmt: skip
                return EXIT_REFUSED
            store = Store(s.db)

        store, transport = self._build(store)
        settle_heap()
        try:
            if self._switch is not None:
                self._switch.switch(self.service)
            elif s.http_address is not None:  # first: a bad address or port fails before we connect
                from . import api

                runner = await api.start_http(self.service, *s.http_address, tokens=s.api_tokens, ops=self.ops)
            connected, _ = await self._unless_stopped(transport.start)
            if not connected:
                log.info("stopped before the broker could be reached")
                return self.exit_code
            # Ready means subscribed: a clustered broker (NATS) grants a new session's
            # subscriptions seconds after CONNACK, and a submission published before the
            # SUBACK reaches no one.
            granted, subscribed = await self._unless_stopped(transport.wait_subscribed, SUBSCRIBE_WAIT)
            if not granted:
                log.info("stopped before the broker granted the subscriptions")
                return self.exit_code
            if not subscribed:
                log.warning("the broker has not answered the subscriptions within %.0f s; going on", SUBSCRIBE_WAIT)
            log.info(
                "master ready: broker %s, prefix %s, db %s, http %s", transport.url, self.topics.prefix,
                redact(s.db), s.http,
            )  # fmt: skip
            await self._timer()
        finally:
            await self._shutdown(runner, transport, store)
        return self.exit_code

    async def _stand_by(self, store: Store) -> tuple[web.AppRunner | None, bool]:
        """(HA) Serve the API as a standby until this master takes the lead: (the HTTP
        runner, True), or (runner, False) when stopped first."""
        from .leadership import Leadership

        assert self._stop is not None and self._loop is not None
        s = self.settings
        self._lead = lead = Leadership(s.db, instance=self.instance, host=socket.gethostname(), lease=s.lease)
        self.reads = Reads(s.db, opener=_pg_reader(s.db))
        standby = Standby(store=store, topics=self.topics, groups=s.groups, reads=self.reads)
        self._metrics = Metrics()
        self._metrics.watch(task_states=store.task_state_counts, leadership=self._leadership_gauges)
        self.ops = Ops(self._metrics, {"store": store.check_writable}, leadership=self._leadership_info)
        self._switch = ServiceSwitch(standby.service)
        self.service = standby.service
        runner = None
        if s.http_address is not None:
            from . import api

            runner = await api.start_http(self._switch, *s.http_address, token=s.token, ops=self.ops)
        log.info("standby: serving the API from %s; waiting to lead (lease %g s)", redact(s.db), s.lease)
        while not self._stop.is_set():
            epoch = await self._loop.run_in_executor(None, lead.try_acquire, time.time())
            if epoch is not None:
                store.epoch = epoch  # type: ignore[attr-defined]  # a PgStore: every transaction checks it
                log.warning("leading now (epoch %d): restoring the unfinished rollouts", epoch)
                self._took_lead_at = time.time()
                return runner, True
            try:
                standby.refresh(time.time())
            except StoreError as e:  # its connection is gone: a restart reconnects (exit 1)
                log.error("standby: the database failed (%s); exiting, a restart reconnects", e)
                self.exit_code = EXIT_FAILED
                return runner, False
            except Exception:
                log.warning("standby: cannot re-read the agents; will retry", exc_info=True)
            try:
                await asyncio.wait_for(self._stop.wait(), min(POLL_LEAD, s.lease / 5))
            except TimeoutError:
                pass
        return runner, False

    async def _shutdown_standby(self, runner: web.AppRunner | None, store: Store) -> None:
        if runner is not None:
            await runner.cleanup()
        if self._lead is not None:
            self._lead.close()
        if getattr(self, "reads", None) is not None:
            self.reads.close()
        store.close()

    def _leadership_info(self) -> dict[str, object]:
        lead = self._lead
        leading = lead is not None and lead.epoch is not None and lead.lost() is None
        read = getattr(getattr(self.service, "store", None), "leadership", None)  # a PgStore's
        epoch, leader, host, since = read() if read is not None else (0, "", "", 0.0)
        return {"role": "leader" if leading else "standby", "instance": self.instance, "epoch": epoch,
                "leader": leader, "leader_host": host, "since": since}  # fmt: skip

    def _leadership_gauges(self) -> tuple[bool, int]:
        info = self._leadership_info()
        return info["role"] == "leader", int(info["epoch"])  # type: ignore[call-overload]

    def _build(self, store: Store) -> tuple[Store, MqttTransport]:
        """The registry, transport, engine and service on ``store``; unfinished tasks restored."""
        s = self.settings
        registry = Registry()
        registry.load(store.load_agents(), time.time())
        self._status_topic = status_topic = self.topics.master_status()
        self._sync_topic = self.topics.master_probe(f"{self.instance}-sync")
        rival_topics = [status_topic, self.topics.master_challenge(), self.topics.master_probe(self.instance)]
        subscriptions = [*self.topics.master_subscriptions(), BRIDGE_STATE_TOPIC, *rival_topics, self._sync_topic]
        assert self._loop is not None
        self._network = AsyncioNetwork(self._loop)
        transport = MqttTransport(
            s.broker,
            client_id=s.client_id,
            # live output at QoS 0: the broker never queues it for an absent master (docs/protocol.md)
            subscriptions=[(t, 1) for t in subscriptions] + [(t, 0) for t in self.topics.output_subscriptions()],
            on_message=self._on_message,
            on_connect=lambda _sp: self._connected(transport),
            will=Will(status_topic, status_payload("offline", self.instance, s.client_id), retain=True),
            retain_as_published=[self.topics.submit()],  # a retained submit is refused even when live (v5)
            mqtt_version=s.mqtt_version,
            network=self._network,
        )
        self._guard = RivalGuard(
            transport=transport, topics=self.topics, instance=self.instance, client_id=s.client_id,
            started_at=self.started_at, republish=lambda: self._publish_status(transport), yield_to=self._yield,
        )  # fmt: skip
        timing = rollout_timing(s)
        metrics = self._metrics or Metrics()
        store.on_commit = metrics.committed
        counted = metrics.counting(transport)
        engine = Engine(
            store=store, transport=counted, topics=self.topics, registry=registry, timing=timing, groups=s.groups,
            metrics=metrics, sealer=sealing.load(s.signing_key, clock=time.time),
            unplanned_target_limit=s.unplanned_target_limit, dispatch_window=s.dispatch_window,
        )  # fmt: skip
        engine.epoch = getattr(store, "epoch", None)  # HA: the leader's (pgstore.py)
        engine.subscribe_batch(ProgressPublisher(counted, self.topics).publish)
        metrics.watch(
            agents=registry.agents, task_states=store.task_state_counts, inbox_depth=lambda: len(self._inbox),
            delivery=engine.backlog,
        )  # fmt: skip
        self.retention = Retention(
            store=store, policy=Policy(s.retention_days, s.output_retention_days), active_ids=engine.active_ids,
            clear_summary=lambda task_id: counted.publish(self.topics.task_summary(task_id), b"", qos=1, retain=True),
            metrics=metrics,
        )  # fmt: skip
        checks = {"broker": lambda: _broker_check(transport), "store": store.check_writable, "inbox": self._inbox_check}
        if self.ops is None:
            self.ops = Ops(metrics, checks)
        else:  # HA: the API's probes, taken over from the standby
            self.ops.checks.clear()
            self.ops.checks.update(checks)
            self.reads.close()
        self.reads = Reads(s.db, opener=_pg_reader(s.db) if self.ha else None)
        self.service = MasterService(
            engine=engine, registry=registry, store=store, topics=self.topics, flush_interval=s.flush_interval,
            reads=self.reads, portable_topics=s.mqtt_version != "5",
        )  # fmt: skip
        self.service.audit.note_signing_key(engine.sealer.kid)
        if isinstance(engine.sealer, sealing.Sealer):
            engine.sealer.approvals = self.service.approvals.for_task
        if self.ha:  # standbys' submissions and kills reach the leader at once
            from .leadership import Notifications

            self._notifications = Notifications(s.db, (TASKS_CHANNEL, KILLS_CHANNEL), self._notified)
            self._notifications.start()
        restored = engine.restore()
        log.info("restored %d unfinished task(s); %d known agent(s)", restored, len(registry))
        if self.ha:
            killed = take_over_requests(engine, store)
            log.warning(
                "took the lead in %.2f s: %d unfinished task(s) restored, %d kill(s) asked of standbys carried out",
                time.time() - self._took_lead_at, restored, killed,
            )  # fmt: skip
        self._transport = transport
        self._listening = ListeningClock(heard_until=store.heard_until() or time.time())
        return store, transport

    def _notified(self, channel: str, task_id: str) -> None:
        """(the LISTEN thread) A standby stored a task or a kill: handled on the loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_notification, channel, task_id)

    def _on_notification(self, channel: str, task_id: str) -> None:
        try:
            on_notification(self.service.engine, channel, task_id)
        except Exception:
            log.exception("could not take over a standby's %s for task %s; the sweep retries", channel, task_id)

    async def _shutdown(self, runner: web.AppRunner | None, transport: MqttTransport, store: Store) -> None:
        log.info("shutting down")
        assert self._loop is not None
        if self._notifications is not None:
            self._notifications.stop()
        if runner is not None:
            await runner.cleanup()
        try:
            if self._lead is None or self._lead.lost() is None:  # a replaced leader may commit nothing
                self._drain_now()  # whatever the backlog: the last batch before stopping
                self.service.flush_agents()
        except Exception:
            log.exception("could not save the last messages and agents; the broker will re-deliver them")
        offline = status_payload("offline", self.instance, self.settings.client_id)
        stepped_down = self._lead is not None and self._lead.lost() is not None  # the new leader's status stays
        final = [(self._status_topic, offline, True)] if transport.is_connected() and not stepped_down else []
        await self._loop.run_in_executor(None, lambda: transport.stop(final=final))
        if self._network is not None:
            self._network.close()
        self.reads.close()
        store.close()
        if self._lead is not None:
            self._lead.close()  # last: the lead is released once everything is saved

    async def _unless_stopped(self, fn: Callable[[*_Ts], _R], *args: *_Ts) -> tuple[bool, _R | None]:
        """Run blocking ``fn(*args)`` in a daemon thread; return ``(True, result)``, or
        ``(False, None)`` when SIGTERM comes first (the thread is abandoned)."""
        assert self._loop is not None and self._stop is not None
        loop = self._loop
        done: asyncio.Future[tuple[_R | None, Exception | None]] = loop.create_future()

        def call() -> None:
            outcome: tuple[_R | None, Exception | None]
            try:
                outcome = (fn(*args), None)
            except Exception as e:  # handed to the loop, which raises it
                outcome = (None, e)

            def settle() -> None:
                if not done.done():
                    done.set_result(outcome)

            loop.call_soon_threadsafe(settle)

        threading.Thread(target=call, name=getattr(fn, "__name__", "blocking"), daemon=True).start()
        stopping = asyncio.ensure_future(self._stop.wait())
        either: list[asyncio.Future[Any]] = [done, stopping]  # (two result types: Future is invariant)
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            return False, None
        stopping.cancel()
        result, error = done.result()
        if error is not None:
            raise error
        return True, result

    def _connected(self, transport: MqttTransport) -> None:
        """(the network's callback) Connected: say we are online, and catch up before judging anything."""
        self._publish_status(transport)
        self._synced = False
        self._unsynced_since = time.time()
        self._send_sync(transport)

    def _send_sync(self, transport: MqttTransport) -> None:
        """Ping ourselves: the broker queues it behind what it holds for our session, so its
        return means the backlog is in (docs/rollout.md, "The listening clock")."""
        self._sync_nonce = uuid.uuid4().hex.encode()
        self._sync_sent_at = time.time()
        try:
            transport.publish(self._sync_topic, self._sync_nonce, qos=1)
        except Exception:
            log.warning("could not send the catch-up ping; will retry in %.0f s", SYNC_RESEND, exc_info=True)

    def _publish_status(self, transport: MqttTransport) -> None:
        payload = status_payload("online", self.instance, self.settings.client_id)
        transport.publish(self._status_topic, payload, qos=1, retain=True)

    # ------------------------------------------------------------------ inbox (network -> loop)
    def _on_message(self, incoming: Incoming) -> None:
        """(on the loop's thread: asyncnet reads the socket there) Into the inbox."""
        memory.heap.note(len(incoming.payload))  # trimmed by the timer once the batch is applied
        lazy = incoming.qos == 0 and incoming.topic.endswith("/heartbeat")
        self._inbox.append(incoming)
        self._arrivals.append(time.monotonic())
        wanted = _LATER if lazy else _NOW
        if self._drain_scheduled >= wanted:
            return
        self._drain_scheduled = wanted
        assert self._loop is not None
        if lazy:
            self._loop.call_later(LAZY_DRAIN, self._drain)
        else:
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Apply what the inbox holds, but not while OUT_BACKLOG_MAX of our publications
        wait for the broker's PUBACK (each result applied publishes its result_ack): the loop
        reads those PUBACKs first, or paho, out of packet ids, would drop what follows.
        (Scheduled only by the transport's messages: the transport exists.)"""
        if self._transport.unacknowledged() > OUT_BACKLOG_MAX:
            assert self._loop is not None
            self._loop.call_later(BACKLOG_WAIT, self._drain)  # still scheduled: _drain_scheduled stays
            return
        self._drain_now()

    def _drain_now(self) -> None:
        """Apply what the inbox holds (what arrived while the last batch was applied)."""
        if len(self._inbox) <= BATCH_MAX:
            batch: Iterable[Incoming] = self._inbox
            self._inbox, self._arrivals = collections.deque(), collections.deque()
        else:
            batch = [self._inbox.popleft() for _ in range(BATCH_MAX)]
            for _ in range(BATCH_MAX):
                self._arrivals.popleft()
        more = bool(self._inbox)
        self._drain_scheduled = _NOW if more else _IDLE
        if more:
            assert self._loop is not None
            self._loop.call_soon(self._drain)
        synced = False
        rest = []
        for m in batch:
            if m.topic == self._sync_topic:  # our own catch-up ping (the listening clock)
                synced = synced or m.payload == self._sync_nonce
                m.ack()
                continue
            try:
                handled = self._guard.handle(m)
            except Exception:
                log.exception("could not handle a message on %s; ignored", m.topic)
                handled = True
            if handled:
                m.ack()
            else:
                rest.append(m)
        batch = rest
        if batch:
            try:
                self.service.handle_batch(batch)
            except NotLeader as e:  # not PUBACKed: the broker hands them to the new leader's session
                self._step_down(str(e))
                return
            except Exception:
                # Only the store can fail here (each message is guarded): memory and disk may
                # now disagree, so stop; the broker re-delivers the un-acked batch to the next run.
                self._fatal("could not apply a batch of %d message(s)", len(batch))
                return
        if synced and not self._synced:
            self._synced = True
            log.info("caught up with the broker: deadlines run again")
        self._pump()

    def _yield(self, _other: protocol.MasterAnswer) -> None:
        """A live master started after this one shares this broker and prefix: exit 2 (HA: a
        newer leader; exit 1, so that a supervisor restarts this one as a standby)."""
        self.exit_code = EXIT_FAILED if self.ha else EXIT_REFUSED
        assert self._stop is not None
        self._stop.set()

    def _pump(self) -> None:
        """Flow control (flow.py): start the clocks of the copies the broker took, send more."""
        try:
            self.service.engine.pump()
        except NotLeader as e:
            self._step_down(str(e))
        except (sqlite3.Error, StoreError):
            self._fatal("the database failed while starting delivery clocks")

    async def _pumping(self) -> None:
        """While task copies are queued or in flight, look for PUBACKs every FLOW_POLL
        seconds (the drain after each inbox batch looks too)."""
        assert self._stop is not None
        engine = self.service.engine
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), FLOW_POLL if engine.flow.busy else TICK_MAX)
            except TimeoutError:
                pass
            if engine.flow.busy:
                self._pump()

    async def _timer(self) -> None:
        assert self._stop is not None
        pumping = asyncio.ensure_future(self._pumping())
        try:
            await self._ticks()
        finally:
            pumping.cancel()

    async def _ticks(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            deadlines = (self.service.engine.next_deadline(), self.service.schedules.next_wake())
            deadline = min((d for d in deadlines if d is not None), default=None)
            delay = TICK_MAX if deadline is None else min(TICK_MAX, max(0.01, deadline - time.time()))
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass
            if self._lead is not None and (why := self._lead.lost()) is not None:
                self._step_down(why)
                return
            self._guard.tick()
            if memory.heap.due:  # large results: SQLite's cache holds their pages; free it, then trim
                self.service.store.shrink_memory()
            memory.heap.tick()
            try:
                if self.ha and time.time() >= self._next_sweep:
                    self._next_sweep = time.time() + SWEEP_INTERVAL
                    sweep(self.service.engine, self.service.store)
                hearing = self._hearing(time.time())
                self.service.housekeeping(verdicts=hearing)
                if hearing:  # like verdicts: a run's overlap is judged only on a caught-up view of it
                    self.service.schedules.tick()
                if not self._behind():
                    self.retention.tick(time.time())
            except NotLeader as e:
                self._step_down(str(e))
            except (sqlite3.Error, StoreError):
                self._fatal("the database failed during housekeeping")
            except Exception:
                log.exception("housekeeping failed; will retry in %.1f s", TICK_MAX)

    def _hearing(self, now: float) -> bool:
        """Whether the master listens now (connected, caught up with its broker, not behind),
        moving every deadline later by the deaf time that ends here. Verdicts wait otherwise."""
        clock = self._listening
        assert clock is not None
        if clock.listening and not clock.observe(now):
            log.warning(
                "no timer pass for %.1f s (frozen, suspended, or the clock jumped): deadlines wait until "
                "the broker's backlog is in", now - clock.heard_until,
            )  # fmt: skip
            self._synced = False
            self._unsynced_since = now
            self._send_sync(self._transport)
        if not self._transport.is_connected() or not self._caught_up(now) or self._behind():
            clock.deaf()
            return False
        deaf = clock.heard(now)
        if deaf >= DEFER_MIN:
            self.service.engine.defer(deaf)
            self._heard_saved = now
        elif now - self._heard_saved >= HEARD_PERSIST_EVERY:
            self.service.engine.heard(now)
            self._heard_saved = now
        return True

    def _caught_up(self, now: float) -> bool:
        """Our catch-up ping came back (re-sent if it seems lost; waited for MAX_VERDICT_DEFER at most)."""
        if self._synced:
            return True
        if now - self._unsynced_since >= MAX_VERDICT_DEFER:
            log.warning("the catch-up ping did not come back within %.0f s; deadlines run again", MAX_VERDICT_DEFER)
            self._synced = True
            return True
        if now - self._sync_sent_at >= SYNC_RESEND:
            self._send_sync(self._transport)
        return False

    def _behind(self) -> bool:
        """True while the inbox holds a message older than BACKLOG_AGE (for at most
        MAX_VERDICT_DEFER seconds in a row, so verdicts are delayed, never starved)."""
        now = time.monotonic()
        oldest = self._arrivals[0] if self._arrivals else None
        if oldest is None or now - oldest < BACKLOG_AGE:
            self._behind_since = None
            return False
        if self._behind_since is None:
            self._behind_since = now
            log.info("inbox %.1f s behind: deferring expiry and staleness verdicts", now - oldest)
        return now - self._behind_since < MAX_VERDICT_DEFER

    def _inbox_check(self) -> str | None:
        oldest = self._arrivals[0] if self._arrivals else None
        age = 0.0 if oldest is None else time.monotonic() - oldest
        return None if age < READY_BACKLOG else f"inbox {age:.0f} s behind ({len(self._inbox)} message(s))"

    def _step_down(self, why: str) -> None:
        """(HA) The lead is gone: publish nothing more, exit 1 (a supervisor restarts this
        master, which then stands by). Agents refuse what an old leader still sends."""
        log.critical("stepping down: %s; exiting (restarted, this master stands by)", why)
        self.exit_code = EXIT_FAILED
        assert self._stop is not None
        self._stop.set()

    def _fatal(self, message: str, *args: object) -> None:
        # called from except blocks: exc_info is the error that stops the master
        log.critical(message + "; stopping (a restart resumes from the database)", *args, exc_info=True)  # noqa: LOG014
        self.exit_code = EXIT_FAILED
        assert self._stop is not None
        self._stop.set()


#: Exit statuses (docs/deploy.md). A supervisor restarts on FAILED, never on REFUSED.
EXIT_STOPPED = 0  #: stopped by SIGTERM/SIGINT
EXIT_FAILED = 1  #: could not run (database, broker, a failed batch): a restart resumes from the database
EXIT_REFUSED = 2  #: bad settings, or another live master: a restart would not help


def _pg_reader(url: str) -> Callable[[], Store]:
    """A reader thread's store on PostgreSQL (reads.py): its own connection, no migration."""

    def open_reader() -> Store:
        from .pgstore import PgStore

        return PgStore(url, migrate=False)

    return open_reader


def _broker_check(transport: MqttTransport) -> str | None:
    return None if transport.is_connected() else "not connected to the broker"  # no URL: /readyz needs no token


#: The cyclic collector's thresholds (CPython's: 700, 10, 10). A master holds a large,
#: long-lived heap (the registry, every unfinished rollout's targets) and allocates a few
#: container objects per message, none of them garbage for long: with CPython's thresholds
#: the collector ran every 700 allocations and rescanned the whole heap every 70,000.
GC_THRESHOLDS = (50_000, 20, 100)


def settle_heap() -> None:
    """After start-up (the store read, the rollouts restored): what is in memory now lives
    as long as the process, so the collector stops scanning it (``gc.freeze``), and it runs
    less often from here on (GC_THRESHOLDS). Cyclic garbage is still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["backup"]:  # mschedule-master backup PATH: see backup.py
        from . import backup

        return backup.main(argv[1:])
    try:
        settings = config.load(argv)
        if settings.http_address is not None:  # before the broker or the database is touched
            from . import api

            api.check_bind(*settings.http_address, settings.token or ("tokens" if settings.tokens else None))
        sealing.check(settings.signing_key)
    except (ConfigError, ValueError) as e:  # api.InsecureBind is a ValueError
        print(f"mschedule-master: {e}", file=sys.stderr)
        return EXIT_REFUSED
    setup_logging(settings.log_level, settings.log_format)
    try:
        lock = None if is_postgres_url(settings.db) else acquire_lock(settings.db)  # PostgreSQL: leadership.py
    except AlreadyRunning as e:
        log.error("%s", e)
        return EXIT_REFUSED
    except OSError as e:
        log.error("cannot use the database %s: %s", settings.db, e)
        return EXIT_FAILED
    try:
        return asyncio.run(Daemon(settings).run())
    except (MasterError, TransportError) as e:
        log.error("cannot run: %s", e)
        return EXIT_FAILED
    except Exception as e:
        log.error("cannot run: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))
        return EXIT_FAILED
    finally:
        if lock is not None:
            lock.close()


if __name__ == "__main__":
    sys.exit(main())
