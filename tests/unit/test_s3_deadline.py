"""An S3 call ends within its timeout whatever the server does: a server (a real socket here)
that trickles its answer a byte at a time, each byte within httpx's per-read timeout, held a
call for as long as it liked; one that answers 503 slowly was asked three times, each with a
full timeout. And it reads no more than the caller takes: an object, a listing page or an error
answer larger than its bound is dropped there, not read into memory whole."""
import socket
import threading
import time

import pytest

from lpt_server import s3
from lpt_server.s3 import S3Client, S3Config, S3Error, TooLarge, Unreachable

BODY = b"x" * 40


class SlowServer:
    """Accepts connections on loopback; each gets `answer(conn)` in a thread of its own."""

    def __init__(self, answer):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.answer, self.accepted, self.closed = answer, 0, False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            conn.recv(65536)
            self.answer(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.closed = True
        self.sock.close()


def trickle(conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
    for b in BODY:
        time.sleep(0.1)
        conn.sendall(bytes([b]))


def headers_then_late_body(conn):
    time.sleep(0.7)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    time.sleep(1.5)                    # httpx would wait a whole timeout for it
    conn.sendall(b"abcd")


def answers_503_in(seconds: float, then_hang: bool = False):
    first = []

    def answer(conn):
        if then_hang and first:
            time.sleep(5)
        first.append(1)
        time.sleep(seconds)
        conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n")
    return answer


@pytest.mark.parametrize("answer, tries, message, pauses", [
    (trickle, 1, "still arriving after 1 s", None),       # trickled to the end: 4 s
    (headers_then_late_body, 1, "still arriving after 1 s", None),   # 1.7 s: the body's read had all 1 s
    (answers_503_in(0.5, then_hang=True), 2, "ReadTimeout", None),   # the retry waited a whole timeout: 1.55 s
    # the second 503 comes at ~0.65 s: a 0.6 s pause would end past the deadline, so no third try
    # (wide margins on both sides: a busy machine's thread wake-ups are late by tenths of a second)
    (answers_503_in(0.3), 2, "503 from the S3 server", (0.05, 0.6)),
])
def test_a_call_ends_within_its_timeout(answer, tries, message, pauses, monkeypatch):
    if pauses is not None:
        monkeypatch.setattr(s3, "READ_RETRY_PAUSES_S", pauses)
    server = SlowServer(answer)
    client = S3Client(S3Config.with_keys(server.url, "us-east-1", "key", "secret"), "b", timeout_s=1.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(Unreachable, match=message):
            client.get("a/current")
        took = time.monotonic() - t0
        assert took < 1.4, took
        assert server.accepted == tries
    finally:
        client.close()
        server.close()


def test_a_large_answer_gets_time_for_its_declared_length():
    """6 MiB at ~3 MiB/s (2 s) on a 1 s timeout: a version read over a slow link must finish,
    with 1 s more per 2 MiB it declares (a trickle of a few bytes gets nothing more)."""
    size, chunk = 6 << 20, 64 << 10

    def slow_large(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // chunk):
            conn.sendall(b"x" * chunk)
            time.sleep(2.0 / (size // chunk))

    server = SlowServer(slow_large)
    client = S3Client(S3Config.with_keys(server.url, "us-east-1", "key", "secret"), "b", timeout_s=1.0)
    try:
        assert len(client.get("a/version", max_bytes=size).body) == size
    finally:
        client.close()
        server.close()


class Sent:
    """An answer of `head` then `size` bytes in 64 KiB chunks, counting what went out."""

    def __init__(self, head: bytes, size: int):
        self.head, self.size, self.sent = head, size, 0

    def __call__(self, conn):
        conn.sendall(self.head)
        chunk = b"<" + b"x" * ((64 << 10) - 1)
        while self.sent < self.size:
            conn.sendall(chunk)
            self.sent += len(chunk)


@pytest.mark.parametrize("head, declared", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (256 << 20), 256 << 20),   # said at once
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", None),                      # only seen as it comes
])
def test_an_object_over_the_callers_limit_is_not_read_whole(head, declared):
    """A 256 MiB answer to a GET that takes 1 MiB: TooLarge (with the declared size when there is
    one) after at most about the limit, in well under the time the whole answer would take."""
    answer = Sent(head, 256 << 20)
    server = SlowServer(answer)
    client = S3Client(S3Config.with_keys(server.url, "us-east-1", "key", "secret"), "b", timeout_s=5.0)
    try:
        with pytest.raises(TooLarge) as e:
            client.get("a/version", max_bytes=1 << 20)
        assert (e.value.size, e.value.limit) == (declared, 1 << 20)
        time.sleep(0.2)
        assert answer.sent < 32 << 20, answer.sent     # the socket closed: the server's writes stopped
    finally:
        client.close()
        server.close()


def test_error_answers_and_listing_pages_are_bounded_too():
    """A 404 whose body never ends is still a 404 (None), read only as far as its Code; a listing
    page past LISTING_PAGE_BYTES is a store answering nonsense (S3Error), not a memory hog."""
    for head, call, check in [
        (b"HTTP/1.1 404 Not Found\r\n\r\n", lambda c: c.get("a/current"), lambda out: out is None),
        (b"HTTP/1.1 200 OK\r\n\r\n", lambda c: list(c.list("a/")), None),
    ]:
        answer = Sent(head, 64 << 20)
        server = SlowServer(answer)
        client = S3Client(S3Config.with_keys(server.url, "us-east-1", "key", "secret"), "b", timeout_s=5.0)
        try:
            if check is None:
                with pytest.raises(S3Error, match="listing page is over"):
                    call(client)
            else:
                assert check(call(client))
            time.sleep(0.2)
            assert answer.sent < 32 << 20, answer.sent
        finally:
            client.close()
            server.close()
