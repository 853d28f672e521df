"""The CLI's number flags: each checks its value and says what it takes when it is wrong
("--parallel takes N or N%, got '1.5'"), before anything is sent. argparse prefixes the
flag's name and exits 2, as for any usage error."""

from __future__ import annotations

import argparse
import math
import re

_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


def _bad(what: str, text: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"takes {what}, got {text!r}")


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parallel(text: str) -> int | str:
    """N >= 1, or N% with 0 < N <= 100."""
    what = "N (a whole number >= 1) or N% (0 < N <= 100)"
    m = _PERCENT.match(text.strip())
    if m:
        if not 0 < float(m[1]) <= 100:
            raise _bad(what, text)
        return text.strip()
    n = _int(text)
    if n is None or n < 1:
        raise _bad(what, text)
    return n


def fail_rate(text: str) -> float | str:
    """A share 0..1, N% (0..100), or -1 for no limit."""
    what = "a share from 0 to 1, N% (0 to 100) or -1 (no limit)"
    m = _PERCENT.match(text.strip())
    if m:
        if not 0 <= float(m[1]) <= 100:
            raise _bad(what, text)
        return text.strip()
    value = _float(text)
    if value is None or not (0 <= value <= 1 or value == -1):
        raise _bad(what, text)
    return int(value) if value == -1 else value


def fail_count(text: str) -> int:
    """N >= 0, or -1 for no limit."""
    n = _int(text)
    if n is None or n < -1:
        raise _bad("N (a whole number >= 0) or -1 (no limit)", text)
    return n


def seconds(text: str) -> float:
    """Seconds >= 0 (0 = none)."""
    value = _float(text)
    if value is None or value < 0:
        raise _bad("seconds (a number >= 0; 0 = none)", text)
    return value


def positive_seconds(text: str) -> float:
    value = _float(text)
    if value is None or value <= 0:
        raise _bad("seconds (a number > 0)", text)
    return value


def byte_count(text: str) -> int:
    n = _int(text)
    if n is None or n < 0:
        raise _bad("a number of bytes (a whole number >= 0)", text)
    return n


def count(text: str) -> int:
    n = _int(text)
    if n is None or n < 0:
        raise _bad("a whole number >= 0", text)
    return n
