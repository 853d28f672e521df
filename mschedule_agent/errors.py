"""The agent's own exceptions; each carries the data a caller needs to report it."""

from __future__ import annotations

from pathlib import Path


class AgentError(Exception):
    """Base class of the agent's errors."""


class IdentityError(AgentError):
    """The agent id file exists but cannot be read or does not hold an id.

    The agent refuses to start rather than silently take a new identity.
    """

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"agent id file {path}: {why}")
        self.path = path
        self.why = why


class ConfigError(AgentError):
    """A setting (file, environment or flag) is missing or invalid."""

    def __init__(self, source: str, why: str) -> None:
        super().__init__(f"{source}: {why}")
        self.source = source
        self.why = why


class LedgerError(AgentError):
    """The ledger refused a change (e.g. a state transition that is not allowed)."""
