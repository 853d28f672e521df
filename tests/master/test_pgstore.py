"""What only the PostgreSQL store and the HA leadership do (the shared behaviour runs on both
stores in test_master_store.py and friends): the two schemas agree, the epoch fence, the
advisory lock and its epochs, notifications, and no password in what is logged."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing

import psycopg
import pytest

from harness.procs import wait_until
from mschedule_master.dburl import redact
from mschedule_master.errors import NotLeader
from mschedule_master.leadership import Leadership, Notifications
from mschedule_master.pgstore import PgStore
from mschedule_master.store import Store


@pytest.fixture
def url(postgres) -> str:
    return postgres.create_database()


def test_the_postgresql_schema_has_the_sqlite_schemas_tables_and_columns(url, tmp_path):
    Store(str(tmp_path / "s.db")).close()
    with closing(sqlite3.connect(tmp_path / "s.db")) as c:
        tables = [r[0] for r in c.execute("select name from sqlite_master where type='table' and name not like 'sqlite_%'")]
        lite = {t: [r[1] for r in c.execute(f"pragma table_info({t})")] for t in tables}
    PgStore(url).close()
    with psycopg.connect(url) as c:
        rows = c.execute(
            "select table_name, column_name from information_schema.columns where table_schema='public' "
            "order by table_name, ordinal_position"
        ).fetchall()
    pg: dict[str, list[str]] = {}
    for table, column in rows:
        if column != "rowid":  # SQLite's implicit rowid, spelled out
            pg.setdefault(table, []).append(column)
    assert pg.pop("leadership") == ["id", "epoch", "leader", "host", "since"]
    assert pg == lite  # a migration added to one store and not the other fails here


def test_a_replaced_leader_commits_nothing(url):
    store = PgStore(url)
    other = PgStore(url)
    try:
        with store.db() as c:
            c.execute("update leadership set epoch = 1")
        store.epoch = 1
        store.add_event(1.0, "while leading", None, None, {})
        with other.db() as c:
            c.execute("update leadership set epoch = 2, leader = 'someone-else'")
        with pytest.raises(NotLeader, match="epoch 1, the database is at epoch 2"):
            store.add_event(2.0, "after the takeover", None, None, {})
        assert [e["kind"] for e in other.events()] == ["while leading"]
    finally:
        store.close()
        other.close()


def test_one_leader_at_a_time_and_each_takeover_a_new_epoch(url):
    PgStore(url).close()
    a = Leadership(url, instance="a", host="h", lease=3)
    b = Leadership(url, instance="b", host="h", lease=3)
    try:
        first = a.try_acquire(1.0)
        assert first is not None and first >= (time.time() - 60) * 1000 and a.lost() is None  # at least the clock's ms
        assert b.try_acquire(2.0) is None  # held
        a.close()  # the session ends: PostgreSQL releases the lock (as the backend exits)
        second = wait_until(lambda: b.try_acquire(3.0), timeout=5, what="the lock to be free")
        assert second > first
        with closing(PgStore(url, migrate=False)) as s:
            assert s.leadership() == (second, "b", "h", 3.0)
            with s.db() as c:  # a database restored from an old backup: its epoch went back
                c.execute("update leadership set epoch = 5")
        b.close()
        c = Leadership(url, instance="c", host="h", lease=3)
        try:
            assert wait_until(lambda: c.try_acquire(4.0), timeout=5, what="the lock") > second  # above every epoch seen
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_a_leader_whose_session_is_ended_knows_it_lost_and_another_takes_over(url):
    PgStore(url).close()
    a = Leadership(url, instance="a", host="h", lease=1)
    b = Leadership(url, instance="b", host="h", lease=1)
    try:
        first = a.try_acquire(1.0)
        assert first is not None
        with psycopg.connect(url, autocommit=True) as admin:  # the database drops a's connection
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where application_name like 'mschedule-master-lead a%'")
        wait_until(lambda: a.lost() is not None, timeout=5, what="the leader to notice")
        assert "lock connection failed" in a.lost() or "no heartbeat" in a.lost()
        assert b.try_acquire(2.0) > first
    finally:
        a.close()
        b.close()


def test_a_silent_leaders_session_is_ended_by_the_database_after_the_lease(url):
    PgStore(url).close()
    a = Leadership(url, instance="a", host="h", lease=1)
    b = Leadership(url, instance="b", host="h", lease=1)
    try:
        assert a.try_acquire(1.0) is not None
        a._stop.set()  # its heartbeat stops, as in a frozen process
        a._beat.join(5)
        started = time.monotonic()
        wait_until(lambda: b.try_acquire(2.0) is not None, timeout=10, interval=0.1, what="the lock to be released")
        assert 0.5 < time.monotonic() - started < 5  # idle_session_timeout = the lease
        assert a.lost() is not None
    finally:
        a.close()
        b.close()


def test_a_notification_arrives_after_its_transaction_commits(url):
    store = PgStore(url)
    got: list[tuple[str, str]] = []
    arrived = threading.Event()

    def deliver(channel: str, payload: str) -> None:
        got.append((channel, payload))
        arrived.set()

    n = Notifications(url, ("mschedule_tasks",), deliver)
    n.start()
    try:
        with store.db():
            store.notify("mschedule_tasks", "t1")
            time.sleep(0.3)
            assert got == []  # not before the commit
        assert arrived.wait(5) and got == [("mschedule_tasks", "t1")]
    finally:
        n.stop()
        store.close()


@pytest.mark.parametrize(
    "db, shown",
    [
        ("postgresql://u:s3cret@db:5432/ms", "postgresql://u:***@db:5432/ms"),
        ("postgresql://u@db/ms", "postgresql://u@db/ms"),
        ("/var/lib/mschedule/master.db", "/var/lib/mschedule/master.db"),
    ],
)
def test_a_database_urls_password_is_never_shown(db, shown):
    assert redact(db) == shown
