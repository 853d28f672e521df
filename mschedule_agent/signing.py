"""Signed tasks and kills on the wire: seal (the master) and verify (the agent).

The wire format (docs/protocol.md, "Signed messages"): a ``signed`` message whose
``header`` is JSON text and ``sig`` an Ed25519 signature over the header's UTF-8 bytes;
the header carries the sha256 of ``body``, the inner message's exact wire bytes. The
verifier checks the signature over the header's raw bytes before parsing it, and the
body's raw bytes against the signed hash before parsing them: nothing the signature
does not cover is ever read (Salt's PR #68934 signed a re-serialisation instead).

PyNaCl (libsodium) does the cryptography; it is imported only by an agent that signs or
verifies, so an agent with signing ``off`` does not pay its ~2.6 MB of RSS.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .keys import PrivateKey
from .protocol import (
    SIGNED_PROTOCOL,
    Approval,
    SignedHeader,
    encode_approval,
    encode_header,
    encode_signed,
    json_string,
)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signature_ok(public: bytes, data: bytes, sig: bytes) -> bool:
    """Whether ``sig`` is ``public``'s Ed25519 signature of ``data`` (libsodium's verify)."""
    import nacl.exceptions
    import nacl.signing

    try:
        nacl.signing.VerifyKey(public).verify(data, sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class SignedApproval:
    """An operator's approval as it travels: the statement's text, its signer and signature."""

    text: str
    kid: str
    sig: bytes


def sign_approval(
    key: PrivateKey, *, job: str, version: int, script_sha256: str, env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> SignedApproval:
    """An operator's offline key approves one job version: its script, environment and directory."""
    import nacl.signing

    approval = Approval(kid=key.kid, job=job, version=version, script_sha256=script_sha256, env=dict(env or {}), cwd=cwd)
    text = encode_approval(approval)
    return SignedApproval(text, key.kid, nacl.signing.SigningKey(key.seed).sign(text.encode("utf-8")).signature)


@dataclass(frozen=True, slots=True)
class Window:
    not_before: float
    expires_at: float


class Signer:
    """Seals task and kill messages with one private key (the master's online key).

    A fan-out sends one body to many agents: the body's hash (and the script's) is
    computed once per body, and each agent's copy only signs its small header."""

    def __init__(self, key: PrivateKey, *, protocol: int = SIGNED_PROTOCOL) -> None:
        import nacl.signing

        self.kid = key.kid
        self._sk = nacl.signing.SigningKey(key.seed)
        self._protocol = protocol
        self._last: tuple[bytes, str, bytes] | None = None  #: (body, its sha256, as a JSON string): the fan-out's cache

    def __repr__(self) -> str:
        return f"Signer(kid={self.kid!r})"

    def _body(self, body: bytes) -> tuple[bytes, str, bytes]:
        last = self._last
        if last is None or last[0] is not body:
            last = self._last = (body, sha256_hex(body), json_string(body.decode("utf-8")))
        return last

    def seal(
        self, body: bytes, *, type: str, id: str, aud: str, window: Window, script_sha256: str | None = None,
        approval: SignedApproval | None = None,
    ) -> bytes:
        """The wire bytes of ``body`` (an encoded task or kill) signed for agent ``aud``."""
        header = SignedHeader(
            protocol=self._protocol, kid=self.kid, type=type, id=id, aud=aud, not_before=window.not_before,
            expires_at=window.expires_at, body_sha256=self._body(body)[1], script_sha256=script_sha256,
            approval=approval.text if approval else None, approval_kid=approval.kid if approval else None,
            approval_sig=approval.sig if approval else None,
        )  # fmt: skip
        text = encode_header(header)
        sig = self._sk.sign(text.encode("utf-8")).signature
        return encode_signed(self.kid, text, sig, self._body(body)[2])
