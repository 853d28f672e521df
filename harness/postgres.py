"""Start a private PostgreSQL for tests: ``initdb`` into a temporary directory, a free
loopback port, its unix socket in that directory, stopped (and the directory removed) at
the end. Never the machine's own service on 5432.

As root, ``initdb`` refuses to run: the data directory is then made in ``/tmp`` (pytest's
``tmp_path`` is under a mode-700 directory the ``postgres`` user cannot enter), owned by
``postgres``, and the server binaries run through ``runuser -u postgres``.

``durable=False`` (the default for tests) turns off fsync: a test survives a kill -9 of a
master, never a power cut, and a shared 2-core machine should not wait on disk syncs.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from .broker import free_port

#: The cluster's superuser (initdb -U): trust authentication on loopback only.
USER = "mschedule"


def pg_bindir() -> str | None:
    """The directory of ``initdb``/``pg_ctl``: on PATH, else Debian's newest server version."""
    found = shutil.which("initdb")
    if found:
        return str(Path(found).parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    return str(Path(versions[-1]).parent) if versions else None


class PostgresError(RuntimeError):
    pass


class Postgres:
    """One private PostgreSQL server. ``start()``/``stop()``; :meth:`create_database` gives
    each test a database of its own (``postgresql://...`` URL)."""

    def __init__(self, *, durable: bool = False) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise PostgresError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
        self.bindir = bindir
        self.durable = durable
        self.port = 0
        self.dir: Path | None = None
        self._as_root = os.geteuid() == 0

    @property
    def data(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [os.path.join(self.bindir, argv[0]), *argv[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise PostgresError(f"{argv[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def start(self) -> Postgres:
        self.dir = Path(tempfile.mkdtemp(prefix="mschedule-pg-"))
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-instructions")
        self.port = free_port()
        opts = [
            f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1", "-c max_connections=200",
            "-c shared_buffers=32MB",
        ]  # fmt: skip
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-w", "-t", "60",
            "-o", " ".join(opts), "start",
        )  # fmt: skip
        return self

    def log(self) -> str:
        try:
            return (self.dir / "postgres.log").read_text(errors="replace") if self.dir else ""
        except OSError:
            return ""

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = name or f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as c:
            c.execute(f'create database "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_connectable(url: str, timeout: float = 10.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.Error:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
