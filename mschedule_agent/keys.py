"""Ed25519 key files and key ids (PyNaCl, i.e. libsodium: no hand-written crypto).

A key pair is two one-line text files::

    NAME.key   mschedule-ed25519-private <kid> <base64 32-byte seed>   (mode 0600)
    NAME.pub   mschedule-ed25519-public <kid> <base64 32-byte public key>

A key id (``kid``) is ``ed25519-`` and the first 16 hex digits of the sha256 of the raw
public key: it names a key in logs, trust files and signed headers without revealing it.
A private key file that others can read is refused, as ssh does; its text never appears
in a log or an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import AgentError

PRIVATE_TAG = "mschedule-ed25519-private"
PUBLIC_TAG = "mschedule-ed25519-public"


class KeyFileError(AgentError):
    """A key file is missing, malformed or readable by others."""


def key_id(public: bytes) -> str:
    """The id of a raw 32-byte Ed25519 public key."""
    return "ed25519-" + hashlib.sha256(public).hexdigest()[:16]


def decode_public(text: str) -> bytes:
    """A base64 public key -> its 32 raw bytes. Raises ValueError."""
    try:
        raw = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("public key is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"public key must be 32 bytes, not {len(raw)}")
    return raw


@dataclass(frozen=True, slots=True)
class PrivateKey:
    kid: str
    seed: bytes  #: 32 bytes; never logged (repr hides it)

    def __repr__(self) -> str:
        return f"PrivateKey(kid={self.kid!r})"

    @property
    def public(self) -> bytes:
        import nacl.signing

        return bytes(nacl.signing.SigningKey(self.seed).verify_key)


def generate() -> PrivateKey:
    import nacl.signing

    sk = nacl.signing.SigningKey.generate()
    return PrivateKey(kid=key_id(bytes(sk.verify_key)), seed=bytes(sk))


def public_line(public: bytes) -> str:
    return f"{PUBLIC_TAG} {key_id(public)} {base64.b64encode(public).decode('ascii')}\n"


def write_pair(key: PrivateKey, base: Path) -> tuple[Path, Path]:
    """Write ``base.key`` (0600, created exclusively: never over an existing key) and ``base.pub``."""
    priv, pub = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for p in (priv, pub):
        if p.exists():
            raise KeyFileError(f"{p} exists; not overwriting a key")
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{PRIVATE_TAG} {key.kid} {base64.b64encode(key.seed).decode('ascii')}\n")
    pub.write_text(public_line(key.public))
    return priv, pub


def load_private(path: Path) -> PrivateKey:
    """Read a private key file. Raises KeyFileError (without the file's text) when unusable."""
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"private key {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
        words = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read private key {path}: {type(e).__name__}") from None
    if len(words) != 3 or words[0] != PRIVATE_TAG:
        raise KeyFileError(f"{path} is not an mschedule private key (expected '{PRIVATE_TAG} KID SEED')")
    try:
        seed = base64.b64decode(words[2], validate=True)
    except binascii.Error:
        raise KeyFileError(f"private key {path}: the seed is not valid base64") from None
    if len(seed) != 32:
        raise KeyFileError(f"private key {path}: the seed must be 32 bytes")
    key = PrivateKey(kid=words[1], seed=seed)
    if key_id(key.public) != key.kid:
        raise KeyFileError(f"private key {path}: its key id does not match its key")
    return key


def load_public(path: Path) -> tuple[str, bytes]:
    """Read a ``.pub`` file: (kid, raw public key). Raises KeyFileError."""
    try:
        words = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read public key {path}: {e}") from None
    if len(words) != 3 or words[0] != PUBLIC_TAG:
        raise KeyFileError(f"{path} is not an mschedule public key")
    try:
        public = decode_public(words[2])
    except ValueError as e:
        raise KeyFileError(f"{path}: {e}") from None
    if key_id(public) != words[1]:
        raise KeyFileError(f"{path}: its key id does not match its key")
    return words[1], public
