"""Log lines operators can grep and ship: one line per event, ids and states as fields.

Code logs ids as ``extra`` fields (``log.info("task %s ...", tid, extra={"task_id": tid})``)
and the formatter appends those it knows, always by the same names (:data:`FIELDS`):

* text (default): ``2026-12-01 10:00:00,123 INFO mschedule_master.engine: task ... task_id=... state=FAILED``
* JSON (``--log-format json``): one object per line,
  ``{"ts": ..., "level": "INFO", "logger": "...", "msg": "...", "task_id": "...", ...}``;
  a traceback goes in ``"exc"`` (still one line).
"""

from __future__ import annotations

import json
import logging
import sys

#: The fields a log record may carry, in this order, always under these names.
FIELDS = ("task_id", "agent_id", "state", "duration")


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k in FIELDS if (v := getattr(record, k, None)) is not None}


class KeyValueFormatter(logging.Formatter):
    """``time level logger: message key=value...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={_text(v)}" for k, v in _fields(record).items())
        return f"{line} {extras}" if extras else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def _text(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def setup(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` ("text" or "json"); called by the daemon only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
