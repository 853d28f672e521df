"""Shared fixtures: a real mosquitto started from deploy/mosquitto/dev.conf on a free
loopback port (never the system broker on 1883), and a unique topic prefix per test."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from harness.broker import Mosquitto
from harness.postgres import Postgres
from harness.require import in_ci, require_tools
from mschedule_agent.protocol import Topics

IN_CI = in_ci()


def pytest_configure(config) -> None:
    """No terminal width from the environment: the CLI draws its tables PIPE_WIDTH wide when
    piped, and tests read them whole. pytest imports readline, which puts COLUMNS=80 into the
    C environment; an xdist worker starts with it in os.environ (tables cut at 80 columns)."""
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)
    # Ctrl-C as in a terminal: a run started in the background by a non-interactive shell
    # (`cmd &`) has SIGINT ignored, every child inherits that, and the CLI's Ctrl-C tests
    # then wait in vain (three did so in a fresh-clone run). A Python handler here is reset
    # to the default in each child at exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items) -> None:
    """Modules with a ``slow`` test run first, otherwise in the usual order (a stable sort,
    modules kept whole). Under xdist (`make test`: --dist loadscope --no-loadscope-reorder)
    each of them starts at once on a worker, rather than last, with the run waiting for it."""
    slow = {item.module for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.module not in slow)


def require_mosquitto() -> None:
    require_tools("mosquitto", why="integration tests run a real broker")


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Mosquitto:
    """One broker for the session; tests keep apart through their topic prefix."""
    require_mosquitto()
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path) -> Mosquitto:
    """A broker of the test's own, for tests that stop, kill or restart it."""
    require_mosquitto()
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """One private PostgreSQL for the session (harness/postgres.py); each test makes its
    own database with ``postgres.create_database()``."""
    require_tools("initdb", why="the PostgreSQL store and the HA masters run on a real PostgreSQL")
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def backend(request) -> str:
    """"sqlite" unless a module lists ``BACKENDS`` (then each test runs on each of them)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def db(backend, tmp_path, request) -> str:
    """A fresh master database of the test's backend: an SQLite path or a PostgreSQL URL."""
    if backend == "sqlite":
        return str(tmp_path / "master.db")
    return request.getfixturevalue("postgres").create_database()


def pytest_generate_tests(metafunc) -> None:
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}/mschedule"


@pytest.fixture
def topics(prefix) -> Topics:
    return Topics(prefix)


@pytest.fixture
def artifacts_dir() -> Path:
    d = Path(__file__).resolve().parent.parent / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d
