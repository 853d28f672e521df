"""``mschedule-agent``: wires the real clock, transport, ledger and executor to the
:class:`~.agent.Agent` core and runs its loop until SIGTERM.

The state directory (``--state-dir``, created 0700) holds::

    agent-id          the agent's uuid (or --id-file); never replaced if unreadable
    ledger.sqlite3    every task id seen, its state, and the result outbox (+ -wal, -shm)
    run/              one private directory per running script, removed when it ends

Exit codes: 0 after a clean shutdown, 2 for a bad setting, id file or ledger. SIGTERM stops
the agent within its scripts' kill grace + FAREWELL_WAIT (2 s) + ~1 s, broker or not.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from .paho_import import import_paho

import_paho(defer_unused=True)  # first, before anything imports paho: keeps ssl & co. out of an idle agent

from . import config, memory  # noqa: E402
from .agent import Agent  # noqa: E402
from .brokerlist import BrokerList  # noqa: E402
from .errors import AgentError, ConfigError, IdentityError, LedgerError  # noqa: E402
from .executor import Executor  # noqa: E402
from .fencing import EpochFence  # noqa: E402
from .gate import Gate  # noqa: E402
from .hostinfo import collect  # noqa: E402
from .identity import load_or_create_id  # noqa: E402
from .ledger import Ledger  # noqa: E402
from .transport import Incoming, MqttTransport, NetworkLoop  # noqa: E402

log = logging.getLogger(__name__)

#: Seconds between two calls of Agent.tick().
TICK = 0.25
#: Seconds a clean shutdown waits for running scripts to be killed and reported.
SHUTDOWN_WAIT = 60.0
#: Seconds a shutdown waits for the broker to acknowledge the agent's "offline" status; past
#: that (a broker gone or frozen) it disconnects asking for its last will instead. With
#: SIGTERM, an agent is gone within: its scripts' kill grace (they are killed, their results
#: kept in the outbox for the next start) + FAREWELL_WAIT + ~1 s, whatever the broker does.
FAREWELL_WAIT = 2.0


def client_id(agent_id: str) -> str:
    return f"mschedule-agent-{agent_id}"


def _handle(agent: Agent, msg: Incoming) -> None:
    memory.heap.note(len(msg.payload))  # trimmed by the main loop once it is handled
    agent.handle(msg)


def make_transport(agent: Agent, *, network: NetworkLoop | None = None) -> MqttTransport:
    """The agent's MQTT connection: persistent session, manual acks, delayed retained will
    (MQTT 3.1.1: a will without delay)."""
    s = agent.settings
    return MqttTransport(
        s.broker,
        client_id=client_id(agent.id),
        subscriptions=agent.subscriptions(),
        on_message=functools.partial(_handle, agent),
        on_connect=agent.on_connect,
        will=agent.will(),
        clean_start=False,
        session_expiry=s.session_expiry,
        ca_file=s.ca_file,
        manual_ack=True,
        network=network,
        mqtt_version=s.mqtt_version,
    )


def build(settings: config.Settings) -> Agent:
    """Everything the daemon runs, ready to connect. Raises AgentError on a bad setup."""
    agent_id = load_or_create_id(settings.id_path)
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = settings.state_dir / "ledger.sqlite3"
    try:
        ledger = Ledger(path)
    except sqlite3.Error as e:
        raise LedgerError(f"ledger {path} cannot be opened ({e}); move it aside to start afresh") from None
    executor = Executor(tmp_dir=settings.state_dir / "run")
    executor.clean_stale()
    return Agent(
        gate=make_gate(agent_id, settings),
        agent_id=agent_id,
        settings=settings,
        ledger=ledger,
        executor=executor,
        now=time.time,
        hostinfo=collect,
        transport_factory=make_transport,
        fence=EpochFence(settings.state_dir / "leader-epoch"),
    )


def make_gate(agent_id: str, settings: config.Settings) -> Gate:
    """The signing checks of docs/security.md; the trust file is read (and checked) now."""
    trust = None
    if settings.signing != "off":
        from .trust import TrustStore  # only with signing: keeps tomllib out of an idle agent

        assert settings.trust_file is not None  # Settings insists
        trust = TrustStore(settings.trust_file)
        log.info("signing %s: trusting %s", settings.signing, " ".join(trust.kids()) or "no key yet")
    return Gate(agent_id=agent_id, mode=settings.signing, trust=trust, skew=settings.clock_skew, now=time.time,
                require_approval=settings.require_approval)


def _connect(transport: MqttTransport) -> None:
    """The first connect, retried forever with jittered backoff (the transport's policy)."""
    try:
        transport.start()
    except Exception:
        log.exception("cannot connect; the agent keeps running its accepted tasks")


def run(agent: Agent) -> None:
    """Connect in the background, loop until SIGTERM/SIGINT, shut down cleanly.

    Ticks start at once: tasks accepted before a restart run even while the broker is
    unreachable (their results wait in the outbox). The signal handler only sets an
    event: raising from it could land inside logging, which would swallow it."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    transport = agent.transport
    if not isinstance(transport, MqttTransport):  # build() gave it make_transport: it is one
        raise TypeError(f"run() drives an agent on an MqttTransport, not on {type(transport).__name__}")
    agent.recover()
    threading.Thread(target=_connect, args=(transport,), name="mqtt-connect", daemon=True).start()
    try:
        while not stop.is_set():
            agent.tick(time.time())
            memory.heap.tick()
            stop.wait(TICK)
    finally:
        log.info("shutting down")
        agent.shutdown(SHUTDOWN_WAIT)
        if transport.is_connected():
            transport.stop(final=agent.farewell(), timeout=FAREWELL_WAIT)
        else:  # nobody to say goodbye to; the last will covers a session we may have had
            transport.stop(timeout=1.0)
        agent.ledger.close()
        log.info("agent %s stopped", agent.id)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = config.load(argv)
    except ConfigError as e:
        print(f"mschedule-agent: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    memory.map_large_blocks()
    try:
        agent = build(settings)
    except IdentityError as e:
        log.error("%s", e)
        print(f"mschedule-agent: {e}", file=sys.stderr)
        return 2
    except (AgentError, OSError) as e:
        log.error("cannot start: %s", e)
        return 2
    log.info("agent %s starting (pid %d, broker %s, state %s)", agent.id, os.getpid(), BrokerList.parse(agent.settings.broker), agent.settings.state_dir)
    if settings.metrics:
        try:
            from .metrics import serve  # only now: prometheus_client would cost an idle agent's RSS
        except ImportError as e:
            log.error("--metrics needs prometheus-client (pip install 'mschedule[metrics]'): %s", e)
            return 2
        try:
            serve(agent, settings.metrics)
        except OSError as e:
            log.error("cannot serve metrics on %s: %s", settings.metrics, e)
            return 2
    run(agent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
