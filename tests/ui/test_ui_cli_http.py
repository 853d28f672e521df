"""The CLI's own HTTP/1.1 client (mschedule_master/cli_http.py) against canned answers on a
real loopback socket: the body framings it must read, and broken answers as one-line errors."""

from __future__ import annotations

import socket
import threading

import pytest

from mschedule_master import cli


class Canned:
    """Answers every connection with ``answer`` (after reading the request head), then closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/prefix"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    break
                head += data
            self.requests.append(head)
            conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def canned():
    servers: list[Canned] = []

    def make(answer: bytes) -> Canned:
        servers.append(Canned(answer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


JSON = b'{"agents": [], "n": 1}'


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(JSON), JSON),
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + JSON,  # ends when the connection closes
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\n" + JSON[:5] + b"\r\n"
        + b"%x\r\n" % (len(JSON) - 5) + JSON[5:] + b"\r\n0\r\nX-Trailer: t\r\n\r\n",
    ],
    ids=["content-length", "close-delimited", "chunked"],
)
def test_reads_every_body_framing(canned, answer):
    server = canned(answer)
    client = cli.Client(server.url, token="s3cret")
    assert client.get("/api/v1/agents", online="true") == {"agents": [], "n": 1}
    head = server.requests[0].decode()
    assert head.startswith("GET /prefix/api/v1/agents?online=true HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.url.split(':')[2].split('/')[0]}\r\n" in head
    assert "Authorization: Bearer s3cret\r\n" in head and "Connection: close\r\n" in head


@pytest.mark.parametrize(
    "answer, needle",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"short\"", "lost the connection"),
        (b"SSH-2.0-OpenSSH_9\r\n", "cannot reach the master"),
        (b"", "cannot reach the master"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "lost the connection"),
        (b"HTTP/1.1 409 Conflict\r\nContent-Length: 36\r\n\r\n{\"error\": \"busy\", \"field\": \"name\"}  ", "name: busy"),
    ],
    ids=["truncated", "not-http", "empty", "bad-chunk", "api-error"],
)
def test_broken_answers_are_one_line_errors(canned, answer, needle):
    server = canned(answer)
    with pytest.raises(cli.CliError) as e:
        cli.Client(server.url).get("/api/v1/agents")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_event_stream_lines_become_events():
    lines = [b"retry: 2000\n", b"event: hello\n", b'data: {"task_id": "t1"}\n', b"\n", b": keepalive\n", b"\n",
             b"event: task\r\n", b'data: {"a":\n', b"data: 1}\n", b"\n"]  # fmt: skip
    assert list(cli.sse_events(iter(lines))) == [("hello", '{"task_id": "t1"}'), ("task", '{"a":\n1}')]
