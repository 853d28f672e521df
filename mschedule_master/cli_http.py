"""The CLI's HTTP/1.1 client: one request per connection over a plain socket.

Why not urllib or http.client: importing http.client pulls in the email package, ~60 ms of
the CLI's start (issue 22), and the CLI needs only JSON requests and one event stream.
What it reads: a status line, headers, and a body framed by ``Content-Length``, chunked
transfer encoding, or the end of the connection (every request says ``Connection: close``).
Left out on purpose: proxies (``http_proxy``), redirects, keep-alive. ``ssl`` is imported
only for an ``https://`` master.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_LINE = 65_536  #: longest status, header or chunk-size line accepted
MAX_HEADERS = 200


class ProtocolError(OSError):
    """The peer did not answer in HTTP (or broke off mid-answer)."""


def split_base(base: str) -> tuple[str, str, int, str]:
    """``http://host:port/prefix`` -> (scheme, host, port, prefix). Raises ValueError."""
    u = urlsplit(base)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"not an http(s) URL: {base!r}")
    port = u.port or (443 if u.scheme == "https" else 80)  # .port raises ValueError on a bad port
    return u.scheme, u.hostname, port, u.path.rstrip("/")


class Response:
    """An answer being read: ``status``, ``reason``, ``headers`` (lower-case names), then the body."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        try:
            self._read_head()
        except BaseException:
            self._file.close()  # else the socket stays open under its file, whatever closes it
            raise

    def _read_head(self) -> None:
        line = self._line()
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP answer: {line[:40]!r}")
        self.status = int(parts[1])
        self.reason = parts[2].strip() if len(parts) > 2 else ""
        self.headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:40]!r}")
            self.headers[name.strip().lower()] = value.strip()
        else:
            raise ProtocolError("too many headers")

    def _line(self) -> bytes:
        line = self._file.readline(MAX_LINE)
        if not line:
            raise ProtocolError("the connection closed before the answer was complete")
        return line

    def pieces(self) -> Iterator[bytes]:
        """The body, as it arrives."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            yield from self._chunks()
        elif "content-length" in self.headers:
            try:
                size = int(self.headers["content-length"])
            except ValueError:
                raise ProtocolError("bad Content-Length") from None
            data = self._file.read(size)
            if len(data) < size:
                raise ProtocolError("the connection closed mid-body")
            yield data
        else:
            while data := self._file.read1(65_536):
                yield data

    def _chunks(self) -> Iterator[bytes]:
        while True:
            try:
                size = int(self._line().split(b";")[0].strip(), 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):  # trailers
                    pass
                return
            data = self._file.read(size)
            if len(data) < size:
                raise ProtocolError("the connection closed mid-chunk")
            self._line()  # the CRLF after the chunk
            yield data

    def read(self) -> bytes:
        return b"".join(self.pieces())

    def lines(self) -> Iterator[bytes]:
        """The body line by line (for an event stream), each line as soon as it is complete."""
        buf = b""
        for piece in self.pieces():
            buf += piece
            while (i := buf.find(b"\n")) >= 0:
                yield buf[: i + 1]
                buf = buf[i + 1 :]
        if buf:
            yield buf

    def shutdown(self) -> None:
        """Unblock a read in another thread: the connection is shut down under it."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    base: str, method: str, target: str, *, headers: dict[str, str], body: bytes | None, timeout: float
) -> Response:
    """Send one request to ``base`` (``target`` is the path and query under its prefix); the
    caller reads and closes the Response. Raises ValueError for a bad base URL, OSError for
    anything on the way (refused, timed out, not HTTP)."""
    scheme, host, port, prefix = split_base(base)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if scheme == "https":
            import ssl  # only for an https master: ssl costs start time

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        host_header = f"[{host}]" if ":" in host else host
        if port != (443 if scheme == "https" else 80):
            host_header += f":{port}"
        lines = [f"{method} {prefix}{target} HTTP/1.1", f"Host: {host_header}", "Connection: close",
                 "User-Agent: mschedule-cli", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return Response(sock)
    except BaseException:
        sock.close()
        raise
