"""Leadership epochs on the agent: refuse messages from a master that no longer leads.

Highly available masters (docs/deploy.md "High availability") stamp each ``task`` and
``kill`` with their leadership's ``epoch``, incremented in the database at every takeover.
An agent keeps the highest epoch it has seen (in a small file beside its ledger, so a
restart keeps it) and refuses anything older with a ``reject`` whose code is
``stale_epoch``: a leader that was frozen or cut off, then woke up, cannot dispatch or
kill any more. A message without an epoch (a single master, or one older than epochs)
is always taken: docs/protocol.md "Leadership epochs" says why that is safe.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class EpochFence:
    """``admit(epoch)`` -> None (take the message) or why it is refused. ``path=None``: in memory."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self.highest = self._load()

    def _load(self) -> int:
        if self.path is None:
            return 0
        try:
            return max(0, int(self.path.read_text().strip() or 0))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            log.warning("cannot read the leadership epoch from %s; starting from 0", self.path, exc_info=True)
            return 0

    def admit(self, epoch: int | None) -> str | None:
        if epoch is None:
            return None
        with self._lock:
            if epoch < self.highest:
                return (
                    f"leadership epoch {epoch} is older than epoch {self.highest} already seen: "
                    "sent by a master that no longer leads"
                )
            if epoch > self.highest:
                self.highest = epoch
                self._save(epoch)
        return None

    def _save(self, epoch: int) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{epoch}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            log.warning("cannot save the leadership epoch %d to %s; kept in memory", epoch, self.path, exc_info=True)
