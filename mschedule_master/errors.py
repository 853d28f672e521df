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
