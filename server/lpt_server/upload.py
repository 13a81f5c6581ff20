"""The adapter file out of an upload body, as the body streams in: the body itself, or the one
part of a multipart/form-data body.

`curl --data-binary @x.safetensors` sends the file as the body. `curl -F file=@x.safetensors` and
HTML forms wrap it in a multipart body (RFC 7578):

    --BOUNDARY\r\n  part headers\r\n  \r\n  FILE BYTES  \r\n--BOUNDARY--\r\n

Both readers are fed the body chunk by chunk, keep only the file's bytes (the body is never held
twice) and count them against the size limit as they arrive. `SinglePart` accepts exactly one
part, under any field name. Bytes in, bytes out: `UploadError` is a 400 (the error table),
`TooLarge` a 413 naming the setting (body.stream_into).
"""
from __future__ import annotations

import re
from typing import Callable, Protocol

MAX_HEADERS = 16 * 1024    # bytes of one part's headers
OVERHEAD = 64 * 1024       # bytes a multipart body may hold besides the file: boundaries, headers
NO_PART = ("the multipart body holds no part: send the adapter file as one form field, "
           "e.g. curl -F file=@my-task.safetensors")


class UploadError(ValueError):
    """The body is not one well-formed part; the message says what to send instead."""


class TooLarge(ValueError):
    """The file (or the body around it) passed the limit."""


class Reader(Protocol):
    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> bytes: ...


def reader(content_type: str, limit: int) -> Reader:
    """The reader for a body of this content type: multipart/form-data, or anything else as raw."""
    separator = boundary(content_type)
    return Raw(limit) if separator is None else SinglePart(separator, limit)


def body_limit(content_type: str, limit: int) -> int:
    """The most bytes a body may declare for a file of at most `limit` bytes."""
    return limit + OVERHEAD if boundary(content_type) is not None else limit


class Raw:
    """The body is the file."""

    def __init__(self, limit: int):
        self.limit, self.size, self.chunks = limit, 0, []

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"the adapter file is over the limit of {self.limit} bytes")
        self.chunks.append(chunk)

    def finish(self) -> bytes:
        return b"".join(self.chunks)


def boundary(content_type: str) -> bytes | None:
    """The boundary of a `multipart/form-data` content type; None for any other type."""
    kind, *params = content_type.split(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip().strip('"')
            if 1 <= len(value) <= 70 and value.isascii():
                return value.encode()
    raise UploadError("a multipart/form-data upload needs a boundary parameter of 1 to 70 characters "
                      "in its Content-Type")


class Sink(Protocol):
    def feed(self, chunk: bytes) -> None: ...


class Parts:
    """The parts of a multipart/form-data body, as it streams in. At each part's start
    `on_part(headers)` (lower-case names -> values) returns the sink its content is fed to,
    in pieces as they arrive; it may raise UploadError to refuse the part. Bounds its own
    buffers (headers); the caller counts the body's bytes."""

    def __init__(self, separator: bytes, on_part: Callable[[dict[str, str]], Sink]):
        self.delimiter = b"\r\n--" + separator
        self.on_part = on_part
        self.sink: Sink | None = None
        # the first delimiter may open the body without a CRLF in front: supply one
        self.buf = b"\r\n"
        self.state = "preamble"      # -> after_delimiter -> headers -> content -> after_delimiter -> done
        self.parts = 0

    def feed(self, chunk: bytes) -> None:
        if self.state == "done":     # the epilogue after the closing delimiter is ignored
            return
        self.buf += chunk
        while self._step():
            pass

    def finish(self) -> None:
        if self.state != "done":
            if self.parts == 0:
                raise UploadError(NO_PART)
            raise UploadError("the multipart body ends before its closing boundary: the upload was cut short")

    def _step(self) -> bool:
        """Advance as far as the buffer allows; True if the state changed (call again)."""
        if self.state in ("preamble", "content"):
            at = self.buf.find(self.delimiter)
            if at < 0:
                # keep a tail that may be the start of a delimiter split across chunks
                cut = max(0, len(self.buf) - len(self.delimiter) + 1)
                if self.state == "content":
                    self.sink.feed(self.buf[:cut])
                self.buf = self.buf[cut:]
                return False
            if self.state == "content":
                self.sink.feed(self.buf[:at])
            self.buf = self.buf[at + len(self.delimiter):]
            self.state = "after_delimiter"
            return True
        if self.state == "after_delimiter":
            line_end = self.buf.find(b"\r\n")
            if self.buf.startswith(b"--"):          # the closing delimiter
                if self.parts == 0:
                    raise UploadError(NO_PART)
                self.state, self.buf = "done", b""
                return False
            if line_end < 0:
                if len(self.buf) > MAX_HEADERS:
                    raise UploadError("a multipart boundary line is not followed by CRLF")
                return False
            if self.buf[:line_end].strip(b" \t"):   # only transport padding may follow a delimiter
                raise UploadError("a multipart boundary line is followed by unexpected bytes")
            self.parts += 1
            self.buf = self.buf[line_end:]          # keep the CRLF: empty headers end at once
            self.state = "headers"
            return True
        if self.state == "headers":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADERS:
                    raise UploadError(f"the part's headers are over {MAX_HEADERS} bytes")
                return False
            self.sink = self.on_part(_headers(self.buf[2:end]))
            self.buf = self.buf[end + 4:]            # the content starts after the blank line
            self.state = "content"
            return True
        return False


def _headers(block: bytes) -> dict[str, str]:
    out = {}
    for line in block.split(b"\r\n"):
        name, sep, value = line.decode("utf-8", "replace").partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def disposition(headers: dict[str, str]) -> tuple[str | None, str | None]:
    """(name, filename) of a part's `Content-Disposition: form-data; name="..."; filename="..."`."""
    params = {}
    for m in _PARAM.finditer(headers.get("content-disposition", "")):
        value = m.group(2)
        params[m.group(1).lower()] = value[1:-1].replace('\\"', '"') if value.startswith('"') else value
    return params.get("name"), params.get("filename")


_PARAM = re.compile(r';\s*([A-Za-z*]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


class SinglePart:
    """The one part of a multipart/form-data body."""

    def __init__(self, separator: bytes, limit: int):
        self.file = Raw(limit)       # the part's content, counted against the limit
        self.parts = Parts(separator, self._on_part)
        self.seen = 0                # bytes of body read

    def _on_part(self, headers: dict[str, str]) -> Sink:
        if self.parts.parts > 1:
            raise UploadError("the multipart body holds more than one part: send only the adapter "
                              "file, e.g. curl -F file=@my-task.safetensors")
        return self.file

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > self.file.limit + OVERHEAD:
            raise TooLarge(f"the upload is over the limit of {self.file.limit} bytes")
        self.parts.feed(chunk)

    def finish(self) -> bytes:
        self.parts.finish()
        return self.file.finish()
