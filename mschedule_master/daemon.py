"""``mschedule-master``: wires the real clock, MQTT transport, store and HTTP API together.

One asyncio loop owns all state. paho's network thread only appends each incoming
message to an inbox and wakes the loop; the loop drains the inbox in batches, each
applied in one SQLite transaction, after which the batch's publications go out and its
messages are PUBACKed. A timer drives the rollouts' deadlines and the registry's
staleness sweep.

Only one master may own a database (an exclusive ``flock`` on ``<db>.lock``) and an MQTT
client id (a retained status on ``<prefix>/master/status`` with a last will; a master
that finds another one online there refuses to start, and one that sees another take
over its client id exits). Both refusals exit with status 2.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path

from mschedule_agent import protocol
from mschedule_agent.protocol import Topics
from mschedule_agent.transport import Incoming, MqttTransport, TransportError, Will

from . import config
from .engine import Engine
from .errors import AlreadyRunning, ConfigError, MasterError
from .metrics import Metrics
from .probes import READY_BACKLOG, Ops
from .reads import Reads
from .registry import Registry
from .retention import Policy, Retention
from .rollout import Timing
from .service import BRIDGE_STATE_TOPIC, MasterService
from .store import Store
from .submissions import ProgressPublisher

log = logging.getLogger(__name__)

#: Messages applied per transaction at most.
BATCH_MAX = 2000
#: The inbox is "behind" when its oldest message waited this long (seconds) ...
BACKLOG_AGE = 0.5
#: ... and time-based verdicts wait for it to catch up, but no longer than this (seconds).
MAX_VERDICT_DEFER = 60.0
#: The timer wakes at least this often (seconds).
TICK_MAX = 0.5
#: How long to look for another master's retained status before connecting, at most.
PROBE_SECONDS = 5.0


def setup_logging(level: str, fmt: str = "text") -> None:
    from . import logs

    logs.setup(level, fmt)


def acquire_lock(db: str):
    """An exclusive lock on ``<db>.lock`` held for the process's life (the open file)."""
    path = Path(db + ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip() or "?"
        f.close()
        raise AlreadyRunning(f"another mschedule-master (pid {other}) owns the database {db}; refusing to start") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def master_status_topic(topics: Topics) -> str:
    return topics.master_status()


def _status_payload(state: str, instance: str, client_id: str) -> bytes:
    return protocol.encode(
        protocol.MasterStatus(state, instance, client_id, os.getpid(), socket.gethostname(), time.time())
    )


def _other_online(payload: bytes, instance: str) -> protocol.MasterStatus | None:
    """The status of another master that says it is online, or None (also for junk)."""
    try:
        status = protocol.decode_as(payload, protocol.MasterStatus)
    except protocol.DecodeError:
        return None
    if status.state == "online" and status.instance != instance:
        return status
    return None


def probe_other_master(settings: config.Settings, topics: Topics, instance: str) -> protocol.MasterStatus | None:
    """The retained status of another master online on this broker and prefix, if any.

    Retained messages arrive right after a subscription; a ping published after it comes
    back after them, so its arrival ends the wait.
    """
    found: list[bytes] = []
    pinged = threading.Event()
    status_topic = master_status_topic(topics)
    ping_topic = topics.master_probe(instance)

    def on_message(msg: Incoming) -> None:
        if msg.topic == ping_topic:
            pinged.set()
        else:
            found.append(msg.payload)

    probe = MqttTransport(
        settings.broker,
        client_id=f"{settings.client_id}-probe-{instance[:8]}",
        subscriptions=[(status_topic, 1), (ping_topic, 1)],
        on_message=on_message,
        on_connect=lambda _sp: probe.publish(ping_topic, b"ping", qos=1),
        clean_start=True,
        session_expiry=0,
        manual_ack=False,
    )
    try:
        probe.start(connect_timeout=10)
    except TransportError as e:
        log.warning("could not look for another master (%s); carrying on", e)
        return None
    try:
        if not pinged.wait(PROBE_SECONDS):
            log.warning("no answer from the broker within %.0f s while looking for another master", PROBE_SECONDS)
    finally:
        probe.stop(timeout=1)
    for payload in found:
        other = _other_online(payload, instance)
        if other is not None:
            return other
    return None


class Daemon:
    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.instance = uuid.uuid4().hex
        self._inbox: collections.deque[Incoming] = collections.deque()
        self._inbox_lock = threading.Lock()
        self._arrivals: collections.deque[float] = collections.deque()  #: monotonic arrival of each inbox entry
        self._behind_since: float | None = None
        self._drain_scheduled = False
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.exit_code = 0

    async def run(self) -> int:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)

        finished, other = await self._unless_stopped(probe_other_master, s, self.topics, self.instance)
        if not finished:
            log.info("stopped before the broker could be reached")
            return 0
        if other is not None:
            log.error(
                "another mschedule-master (client id %s, pid %s on %s) is online on this broker and prefix; "
                "refusing to start", other.client_id, other.pid, other.host,
            )  # fmt: skip
            return 2

        store, transport = self._build()
        runner = None
        try:
            if s.http_address is not None:  # first: a bad address or port fails before we connect
                from . import api

                runner = await api.start_http(self.service, *s.http_address, token=s.token, ops=self.ops)
            connected, _ = await self._unless_stopped(transport.start)
            if not connected:
                log.info("stopped before the broker could be reached")
                return self.exit_code
            log.info(
                "master ready: broker %s, prefix %s, db %s, http %s", transport.url, self.topics.prefix, s.db, s.http
            )
            await self._timer()
        finally:
            await self._shutdown(runner, transport, store)
        return self.exit_code

    def _build(self) -> tuple[Store, MqttTransport]:
        """The store, registry, transport, engine and service; unfinished tasks restored."""
        s = self.settings
        store = Store(s.db)
        registry = Registry()
        registry.load(store.load_agents(), time.time())
        self._status_topic = status_topic = master_status_topic(self.topics)
        subscriptions = [*self.topics.master_subscriptions(), BRIDGE_STATE_TOPIC, status_topic]
        transport = MqttTransport(
            s.broker,
            client_id=s.client_id,
            subscriptions=[(t, 1) for t in subscriptions],
            on_message=self._on_message,
            on_connect=lambda _sp: self._publish_status(transport),
            will=Will(status_topic, _status_payload("offline", self.instance, s.client_id), retain=True),
        )
        timing = Timing(
            delivery_timeout=s.delivery_timeout, redeliver_interval=s.redeliver_interval, ack_grace=s.ack_grace,
            lost_grace=s.lost_grace, kill_resend=s.kill_resend,
        )  # fmt: skip
        metrics = Metrics()
        store.on_commit = metrics.committed
        counted = metrics.counting(transport)
        engine = Engine(
            store=store, transport=counted, topics=self.topics, registry=registry, timing=timing, groups=s.groups,
            metrics=metrics,
        )  # fmt: skip
        engine.subscribe(ProgressPublisher(counted, self.topics))
        metrics.watch(agents=registry.agents, task_states=store.task_state_counts, inbox_depth=lambda: len(self._inbox))
        self.retention = Retention(
            store=store, policy=Policy(s.retention_days, s.output_retention_days), active_ids=engine.active_ids,
            clear_summary=lambda task_id: counted.publish(self.topics.task_summary(task_id), b"", qos=1, retain=True),
            metrics=metrics,
        )  # fmt: skip
        checks = {"broker": lambda: _broker_check(transport), "store": store.check_writable, "inbox": self._inbox_check}
        self.ops = Ops(metrics, checks)
        self.reads = Reads(s.db)
        self.service = MasterService(
            engine=engine, registry=registry, store=store, topics=self.topics, flush_interval=s.flush_interval,
            reads=self.reads,
        )  # fmt: skip
        restored = engine.restore()
        log.info("restored %d unfinished task(s); %d known agent(s)", restored, len(registry))
        return store, transport

    async def _shutdown(self, runner, transport: MqttTransport, store: Store) -> None:
        log.info("shutting down")
        assert self._loop is not None
        if runner is not None:
            await runner.cleanup()
        try:
            self._drain()
            self.service.flush_agents()
        except Exception:
            log.exception("could not save the last messages and agents; the broker will re-deliver them")
        offline = _status_payload("offline", self.instance, self.settings.client_id)
        final = [(self._status_topic, offline, True)] if transport.is_connected() else []
        await self._loop.run_in_executor(None, lambda: transport.stop(final=final))
        self.reads.close()
        store.close()

    async def _unless_stopped(self, fn, *args):
        """Run blocking ``fn(*args)`` in a daemon thread; return ``(True, result)``, or
        ``(False, None)`` when SIGTERM comes first (the thread is abandoned)."""
        assert self._loop is not None and self._stop is not None
        loop = self._loop
        done: asyncio.Future = loop.create_future()

        def call() -> None:
            try:
                outcome = (fn(*args), None)
            except Exception as e:  # handed to the loop, which raises it
                outcome = (None, e)
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(outcome))

        threading.Thread(target=call, name=getattr(fn, "__name__", "blocking"), daemon=True).start()
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([done, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            return False, None
        stopping.cancel()
        result, error = done.result()
        if error is not None:
            raise error
        return True, result

    def _publish_status(self, transport: MqttTransport) -> None:
        payload = _status_payload("online", self.instance, self.settings.client_id)
        transport.publish(self._status_topic, payload, qos=1, retain=True)

    # ------------------------------------------------------------------ inbox (paho thread -> loop)
    def _on_message(self, incoming: Incoming) -> None:
        with self._inbox_lock:
            self._inbox.append(incoming)
            self._arrivals.append(time.monotonic())
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """Apply what the inbox holds (what arrived while the last batch was applied)."""
        with self._inbox_lock:
            n = min(len(self._inbox), BATCH_MAX)
            batch = [self._inbox.popleft() for _ in range(n)]
            for _ in range(n):
                self._arrivals.popleft()
            more = bool(self._inbox)
            self._drain_scheduled = more
        if more:
            assert self._loop is not None
            self._loop.call_soon(self._drain)
        mine = [m for m in batch if m.topic == self._status_topic]
        for m in mine:
            self._check_takeover(m)
            m.ack()
        batch = [m for m in batch if m.topic != self._status_topic]
        if batch:
            try:
                self.service.handle_batch(batch)
            except Exception:
                # Only the store can fail here (each message is guarded): memory and disk may
                # now disagree, so stop; the broker re-delivers the un-acked batch to the next run.
                self._fatal("could not apply a batch of %d message(s)", len(batch))

    def _check_takeover(self, msg: Incoming) -> None:
        other = _other_online(msg.payload, self.instance)
        if other is not None:
            log.error("another mschedule-master (pid %s on %s) took over this client id; exiting", other.pid, other.host)
            self.exit_code = 2
            assert self._stop is not None
            self._stop.set()

    async def _timer(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            deadline = self.service.engine.next_deadline()
            delay = TICK_MAX if deadline is None else min(TICK_MAX, max(0.01, deadline - time.time()))
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass
            try:
                behind = self._behind()
                self.service.housekeeping(verdicts=not behind)
                if not behind:
                    self.retention.tick(time.time())
            except sqlite3.Error:
                self._fatal("the database failed during housekeeping")
            except Exception:
                log.exception("housekeeping failed; will retry in %.1f s", TICK_MAX)

    def _behind(self) -> bool:
        """True while the inbox holds a message older than BACKLOG_AGE (for at most
        MAX_VERDICT_DEFER seconds in a row, so verdicts are delayed, never starved)."""
        now = time.monotonic()
        with self._inbox_lock:
            oldest = self._arrivals[0] if self._arrivals else None
        if oldest is None or now - oldest < BACKLOG_AGE:
            self._behind_since = None
            return False
        if self._behind_since is None:
            self._behind_since = now
            log.info("inbox %.1f s behind: deferring expiry and staleness verdicts", now - oldest)
        return now - self._behind_since < MAX_VERDICT_DEFER

    def _inbox_check(self) -> str | None:
        with self._inbox_lock:
            oldest = self._arrivals[0] if self._arrivals else None
        age = 0.0 if oldest is None else time.monotonic() - oldest
        return None if age < READY_BACKLOG else f"inbox {age:.0f} s behind ({len(self._inbox)} message(s))"

    def _fatal(self, message: str, *args: object) -> None:
        log.critical(message + "; stopping (a restart resumes from the database)", *args, exc_info=True)
        self.exit_code = 1
        assert self._stop is not None
        self._stop.set()


def _broker_check(transport: MqttTransport) -> str | None:
    return None if transport.is_connected() else "not connected to the broker"  # no URL: /readyz needs no token


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["backup"]:  # mschedule-master backup PATH: see backup.py
        from . import backup

        return backup.main(argv[1:])
    try:
        settings = config.load(argv)
    except ConfigError as e:
        print(f"mschedule-master: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        lock = acquire_lock(settings.db)
    except AlreadyRunning as e:
        log.error("%s", e)
        return 2
    except OSError as e:
        log.error("cannot use the database %s: %s", settings.db, e)
        return 1
    try:
        return asyncio.run(Daemon(settings).run())
    except (MasterError, TransportError) as e:
        log.error("cannot run: %s", e)
        return 1
    except Exception as e:  # e.g. the HTTP API refusing an insecure address
        log.error("cannot run: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))
        return 1
    finally:
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
