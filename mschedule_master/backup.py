"""``mschedule-master backup PATH``: a consistent copy of the master's database, taken
while the master runs.

SQLite's online backup API copies the pages inside one read transaction: with WAL, the
running master keeps writing meanwhile, and the copy is the database as of one commit (a
half-applied batch is never in it). The copy is written to ``PATH.partial``, checked with
``pragma integrity_check``, synced, then renamed to PATH, so PATH is always either absent
or a whole, valid database.

Restore (README "Operating"): stop the master, put the copy in place of its database
(and remove the old ``-wal``/``-shm`` files next to it), start the master. It resumes the
unfinished tasks the copy holds, as after any restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from . import config
from .dburl import is_postgres_url, redact
from .errors import ConfigError

log = logging.getLogger(__name__)


class BackupError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Copied:
    path: str
    bytes: int
    tasks: int
    seconds: float


def backup(db: str, dest: str) -> Copied:
    """Copy the database ``db`` to ``dest`` consistently; raise BackupError."""
    if is_postgres_url(db):
        raise BackupError(
            f"{redact(db)} is a PostgreSQL database: back it up with PostgreSQL's tools "
            "(pg_dump, or its base backups and WAL archiving; docs/deploy.md 'High availability')"
        )
    if not Path(db).is_file():
        raise BackupError(f"no database at {db}")
    started = time.monotonic()
    partial = dest + ".partial"
    try:
        Path(partial).unlink(missing_ok=True)
        with closing(sqlite3.connect(db, timeout=30.0)) as src, closing(sqlite3.connect(partial)) as dst:
            src.execute("pragma busy_timeout=30000")
            src.backup(dst)  # all pages in one step: one read transaction, one consistent snapshot
            problem = dst.execute("pragma integrity_check").fetchone()[0]
            if problem != "ok":
                raise BackupError(f"the copy failed its integrity check: {problem}")
            dst.execute("pragma journal_mode=delete")  # one self-contained file, no -wal beside it
            tasks = dst.execute("select count(*) from tasks").fetchone()[0]
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, dest)
    except sqlite3.Error as e:
        Path(partial).unlink(missing_ok=True)
        raise BackupError(f"cannot back up {db}: {e}") from None
    except OSError as e:
        Path(partial).unlink(missing_ok=True)
        raise BackupError(f"cannot write {dest}: {e}") from None
    return Copied(dest, os.path.getsize(dest), tasks, time.monotonic() - started)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mschedule-master backup",
        description="Copy the master's database consistently while the master runs (SQLite online backup).",
    )
    p.add_argument("path", help="where to write the copy (replaced only once the copy is complete and checked)")
    p.add_argument("--config", help="TOML settings file (its db is copied)")
    p.add_argument("--db", help=f"the database to copy (default: the config's, else {config.DEFAULT_DB})")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        db = args.db or config.load(["--config", args.config] if args.config else []).db
    except ConfigError as e:
        print(f"mschedule-master backup: {e}", file=sys.stderr)
        return 2
    try:
        copied = backup(db, args.path)
    except BackupError as e:
        print(f"mschedule-master backup: {e}", file=sys.stderr)
        return 1
    print(f"backed up {db} to {copied.path}: {copied.bytes} bytes, {copied.tasks} task(s), {copied.seconds:.2f} s")
    return 0
