"""The master's own errors. Service-boundary errors (NotFound, InvalidRequest) live in
models.py, shared with the HTTP API."""

from __future__ import annotations


class MasterError(Exception):
    """Base of everything the master daemon raises on purpose."""


class ConfigError(MasterError):
    """A setting is missing or malformed: ``field`` names it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AlreadyRunning(MasterError):
    """Another master owns this database (or this MQTT client id)."""


class StoreError(MasterError):
    """The database cannot be opened or has an unknown schema."""


class DatabaseError(StoreError):
    """A statement failed on PostgreSQL (pgstore.py): the store's one error for psycopg's."""


class NotLeader(StoreError):
    """This master's leadership ended: another master took over with a newer epoch, so
    nothing may be committed or dispatched here any more (pgstore.py, leadership.py)."""

    def __init__(self, epoch: int, current: int | None, leader: str = "") -> None:
        super().__init__(
            f"leadership lost: this master led in epoch {epoch}, the database is at epoch {current}"
            + (f" (leader {leader})" if leader else "")
        )
        self.epoch = epoch
        self.current = current
