"""Text the CLI draws: remote data made visible, and counts that read right.

Scripts' output, hostnames, labels and task names come from the fleet: an escape sequence or
a NUL in them must not clear the user's screen or hide a line, so tables and summaries show
control characters as escapes (``\\x1b[2J``); ``mschedule output`` still writes the raw bytes.
"""

from __future__ import annotations

import unicodedata

#: Kept as they are: they lay text out and do no harm.
_LAYOUT = frozenset("\n\t")


def visible(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` with control and format characters (C0, DEL, C1, bidi overrides, ...) as
    Python-style escapes; newlines and tabs stay unless ``keep_newlines`` is False."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _LAYOUT and (keep_newlines or ch == "\t"):
            out.append(ch)
        elif ch.isprintable() or unicodedata.category(ch) == "Zs":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 target``, ``2 targets``, ``0 targets``."""
    return f"{n} {word if n == 1 else many or word + 's'}"
