"""What an agent lets through from its tasks and control topics: the signing modes.

* ``off``: unsigned messages are taken as they are; a signed one is unwrapped unchecked.
* ``audit``: every check runs; a message that ``enforce`` would refuse still runs, and
  the reason is logged and reported to the master (``ack.audit``).
* ``enforce``: a task or kill runs only when its signature verifies with a trusted key
  valid now, its header's protocol is current (no downgrade to unsigned or older), its
  audience is this agent, its window holds (give or take ``skew`` seconds), and its body
  is the one the header hashes. Anything else raises :class:`Refused`, saying why.

Replays are the ledger's job: a task id already seen never runs again, and a copy that
arrives after its ``expires_at`` is refused whether or not the id is still known.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .protocol import (
    SIGNED_PROTOCOL,
    DecodeError,
    Message,
    Signed,
    SignedHeader,
    Task,
    decode_approval,
    decode_as,
    decode_header,
    peek_text,
)

TYPE_CHECKING = False  # signing and trust (hashlib, PyNaCl) load only when a check runs: not in an idle agent
if TYPE_CHECKING:
    from .trust import TrustStore

log = logging.getLogger(__name__)

MODES = ("off", "audit", "enforce")
DEFAULT_SKEW = 30.0  #: seconds of clock difference tolerated at both ends of a window


class Refused(Exception):
    """``enforce`` refuses this message; ``code`` is a reject code, ``reason`` says why."""

    def __init__(self, code: str, reason: str, msg_id: str | None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.msg_id = msg_id


@dataclass(frozen=True, slots=True)
class Opened:
    message: Message
    raw: bytes  #: the inner message's own bytes (what the ledger keeps)
    audit: str = ""  #: audit mode: why enforce would have refused it ("" = it would not)


class Gate:
    def __init__(
        self, *, agent_id: str, mode: str = "off", trust: TrustStore | None = None, skew: float = DEFAULT_SKEW,
        now: Callable[[], float], require_approval: bool = False,
    ) -> None:  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"signing mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode != "off" and trust is None:
            raise ValueError(f"signing mode {mode!r} needs a trust file")
        self.agent_id = agent_id
        self.mode = mode
        self.trust = trust
        self.skew = skew
        self.require_approval = require_approval  #: tasks also need an operator's approval
        self._now = now

    def open(self, data: bytes, *classes: type, unsigned_ok: tuple[type, ...] = ()) -> Opened:
        """The message in ``data`` (one of ``classes``, or a Signed one wrapping one; one of
        ``unsigned_ok`` is taken unsigned in every mode, e.g. ``result_ack``).

        Raises DecodeError for a message that cannot be read, Refused (enforce only)."""
        outer: Message = decode_as(data, Signed, *classes, *unsigned_ok)
        if isinstance(outer, unsigned_ok):
            return Opened(outer, data)
        if self.mode == "off":
            if isinstance(outer, Signed):
                body = outer.body.encode("utf-8")
                return Opened(decode_as(body, *classes), body)
            return Opened(outer, data)
        try:
            inner, raw = self._check(outer, data, classes)
        except Refused as e:
            if self.mode == "enforce":
                raise
            log.warning("signing audit: enforce would refuse %s (%s): %s", e.msg_id, e.code, e.reason)
            inner, raw = self._unchecked(outer, data, classes)
            return Opened(inner, raw, f"{e.code}: {e.reason}")
        return Opened(inner, raw)

    @staticmethod
    def _unchecked(outer: Message, data: bytes, classes: tuple[type, ...]) -> tuple[Message, bytes]:
        if isinstance(outer, Signed):
            body = outer.body.encode("utf-8")
            return decode_as(body, *classes), body
        return outer, data

    def _check(self, outer: Message, data: bytes, classes: tuple[type, ...]) -> tuple[Message, bytes]:
        from .signing import sha256_hex

        if not isinstance(outer, Signed):
            msg_id = getattr(outer, "id", None)
            raise Refused("unsigned", f"unsigned {outer.TYPE}: this agent runs only signed tasks and kills", msg_id)
        header = self._verified_header(outer)
        body = outer.body.encode("utf-8")
        self._check_header(header)
        if sha256_hex(body) != header.body_sha256:
            raise Refused("bad_signature", "the body is not the one the signed header hashes", header.id)
        inner: Message = decode_as(body, *classes)
        if inner.TYPE != header.type or getattr(inner, "id", None) != header.id:
            raise Refused("bad_signature", "the signed header does not describe its body", header.id)
        if isinstance(inner, Task) and header.script_sha256 != sha256_hex(inner.script):
            raise Refused("bad_signature", "the script is not the one the signed header names", header.id)
        if isinstance(inner, Task) and self.require_approval:
            self._check_approval(header, inner)
        return inner, body

    def _check_approval(self, h: SignedHeader, task: Task) -> None:
        """An operator's offline key approved this very script (docs/security.md)."""
        from .signing import signature_ok

        if h.approval is None or h.approval_kid is None or h.approval_sig is None:
            raise Refused("unapproved", "this agent runs only job versions an operator approved", h.id)
        assert self.trust is not None
        key = self.trust.get(h.approval_kid)
        if key is None or key.role != "operator" or not key.valid_at(self._now()):
            raise Refused("unapproved", f"approval key {h.approval_kid} is not a trusted operator key now", h.id)
        if not signature_ok(key.public, h.approval.encode("utf-8"), h.approval_sig):
            raise Refused("unapproved", f"the approval does not verify with key {h.approval_kid}", h.id)
        try:
            approval = decode_approval(h.approval)
        except DecodeError as e:
            raise Refused("unapproved", f"approval: {e}", h.id) from None
        if approval.kid != h.approval_kid or approval.script_sha256 != h.script_sha256:
            raise Refused("unapproved", f"the approval is for another script ({approval.job}@{approval.version})", h.id)
        if approval.env != task.env or approval.cwd != task.cwd:
            raise Refused("unapproved", f"{approval.job}@{approval.version} was approved with another env or cwd", h.id)

    def _verified_header(self, outer: Signed) -> SignedHeader:
        from .signing import signature_ok

        msg_id = peek_text(outer.header, "id")  # unverified: only to address the reject
        assert self.trust is not None
        key = self.trust.get(outer.kid)
        if key is None:
            why = f"; {self.trust.error}" if self.trust.error else ""
            raise Refused("untrusted_key", f"key {outer.kid} is not trusted{why}", msg_id)
        now = self._now()
        if not key.valid_at(now):
            raise Refused("untrusted_key", f"key {outer.kid} is outside its validity window", msg_id)
        if key.role != "master":
            raise Refused("untrusted_key", f"key {outer.kid} is an {key.role} key: it approves, it does not dispatch", msg_id)
        if not signature_ok(key.public, outer.header.encode("utf-8"), outer.sig):
            raise Refused("bad_signature", f"the signature does not verify with key {outer.kid}", msg_id)
        try:
            header = decode_header(outer.header)
        except DecodeError as e:
            raise Refused("bad_message", f"signed header: {e}", msg_id) from None
        if header.kid != outer.kid:
            raise Refused("bad_signature", "the signed header names another key", msg_id)
        return header

    def _check_header(self, h: SignedHeader) -> None:
        if h.protocol < SIGNED_PROTOCOL:
            raise Refused("downgrade", f"signed protocol {h.protocol} is older than {SIGNED_PROTOCOL}", h.id)
        if h.aud != self.agent_id:
            raise Refused("wrong_audience", f"signed for agent {h.aud}, not this one", h.id)
        now = self._now()
        if now + self.skew < h.not_before:
            raise Refused("not_yet_valid", f"valid only in {h.not_before - now:.1f} s", h.id)
        if now - self.skew > h.expires_at:
            raise Refused("expired", f"its signature expired {now - h.expires_at:.1f} s ago", h.id)

