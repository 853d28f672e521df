"""What the master's ``--db`` names: an SQLite file path, or a ``postgresql://`` URL (HA
masters: pgstore.py). No driver import here: an SQLite master never loads psycopg."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def redact(db: str) -> str:
    """``db`` for logs and errors: a URL's password replaced by ``***`` (never logged)."""
    if not is_postgres_url(db):
        return db
    parts = urlsplit(db)
    if parts.password is None:
        return db
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}"))
