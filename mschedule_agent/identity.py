"""The agent's identity: a uuid4 hex created once, persisted atomically, reused forever."""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

from .errors import IdentityError

log = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{32}$")


def load_or_create_id(path: Path) -> str:
    """Read the id stored in ``path``; create it (atomically) when the file does not exist.

    Raises IdentityError when the file exists but is unreadable or holds no valid id:
    a silently new identity would orphan every task the master believes is on this agent.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return _create(path)
    except (OSError, UnicodeDecodeError) as e:
        raise IdentityError(path, f"cannot be read ({e})") from None
    agent_id = text.strip()
    if not _ID.match(agent_id):
        raise IdentityError(path, "does not hold a 32-character hex agent id (corrupt?); fix or remove it")
    return agent_id


def _create(path: Path) -> str:
    agent_id = uuid.uuid4().hex
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(agent_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise IdentityError(path, f"cannot be created ({e})") from None
    log.info("created agent id %s in %s", agent_id, path)
    return agent_id


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
