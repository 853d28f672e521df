"""The master's online key at work: each task and kill copy is signed for its agent.

The engine hands over the encoded message (one body for the whole fan-out) and gets back
the bytes to publish to one agent (mschedule_agent/signing.py, docs/protocol.md "signed").
Without a signing key (``signing_key`` unset) :class:`Unsealed` publishes messages as they
are, for agents with signing ``off`` or ``audit``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from mschedule_agent import keys
from mschedule_agent.signing import SignedApproval, Signer, Window

from .errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds a signed kill stays valid (it is re-sent, signed afresh, every kill_resend).
KILL_VALIDITY = 300.0
#: Tasks whose approval lookup is remembered (a fan-out asks once per task, not per agent).
APPROVALS_KEPT = 256


class Unsealed:
    """No signing key: publish what the engine encoded."""

    kid: str | None = None

    def task(self, body: bytes, *, task_id: str, script: bytes, agent_id: str, expires_at: float | None) -> bytes:
        return body

    def kill(self, body: bytes, *, task_id: str, agent_id: str) -> bytes:
        return body


class Sealer(Unsealed):
    def __init__(self, key: keys.PrivateKey, *, clock: Callable[[], float], kill_validity: float = KILL_VALIDITY) -> None:
        self._signer = Signer(key)
        self.kid = key.kid
        self._clock = clock
        self._kill_validity = kill_validity
        self._script: tuple[bytes, str] | None = None  #: (script, its sha256): one hash per fan-out
        #: task id -> the operator's approval of the job version it runs (approvals.py); set by the daemon
        self.approvals: Callable[[str], SignedApproval | None] = lambda task_id: None
        self._approved: dict[str, SignedApproval | None] = {}

    def _approval(self, task_id: str) -> SignedApproval | None:
        if task_id not in self._approved:
            if len(self._approved) >= APPROVALS_KEPT:
                self._approved.clear()
            self._approved[task_id] = self.approvals(task_id)
        return self._approved[task_id]

    def _script_sha(self, script: bytes) -> str:
        if self._script is None or self._script[0] is not script:
            self._script = (script, hashlib.sha256(script).hexdigest())
        return self._script[1]

    def task(self, body: bytes, *, task_id: str, script: bytes, agent_id: str, expires_at: float | None) -> bytes:
        now = self._clock()
        window = Window(now, expires_at if expires_at is not None else now + self._kill_validity)
        return self._signer.seal(
            body, type="task", id=task_id, aud=agent_id, window=window, script_sha256=self._script_sha(script),
            approval=self._approval(task_id),
        )  # fmt: skip

    def kill(self, body: bytes, *, task_id: str, agent_id: str) -> bytes:
        now = self._clock()
        return self._signer.seal(body, type="kill", id=task_id, aud=agent_id, window=Window(now, now + self._kill_validity))


def check(path: str | None) -> None:
    """At start-up: a ``signing_key`` that cannot be used is a ConfigError (without its text)."""
    if path:
        try:
            keys.load_private(Path(path))
        except keys.KeyFileError as e:
            raise ConfigError(str(e), "signing_key") from None


def load(path: str | None, *, clock: Callable[[], float]) -> Unsealed:
    """The sealer for ``signing_key`` (a private key file). Raises keys.KeyFileError."""
    if not path:
        return Unsealed()
    key = keys.load_private(Path(path))
    log.info("signing tasks and kills with key %s", key.kid)
    return Sealer(key, clock=clock)
