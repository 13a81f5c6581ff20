"""The adapter file out of an upload body (lpt_server.upload): raw, or the one part of a
multipart/form-data body as curl, httpx and browsers send it, split into chunks anywhere."""
import os
import random

import httpx
import pytest

from lpt_server import upload

pytestmark = pytest.mark.unit

LIMIT = 4096


def form_body(content: bytes, field: str = "file", filename: str = "my-task.safetensors") -> tuple[str, bytes]:
    """(content type, body) of a multipart upload built by httpx, the way clients build them."""
    request = httpx.Request("PUT", "http://x/v1/adapters/a", files={field: (filename, content)})
    return request.headers["content-type"], request.read()


def read(content_type: str, body: bytes, chunks: list[int] | None = None, limit: int = LIMIT) -> bytes:
    reader = upload.reader(content_type, limit)
    start = 0
    for size in chunks or [len(body)]:
        reader.feed(body[start:start + size])
        start += size
    reader.feed(body[start:])
    return reader.finish()


def splits(n: int, rng: random.Random) -> list[int]:
    return [rng.randint(1, 9) for _ in range(n)]


@pytest.mark.parametrize("content", [b"", b"x", b"\r\n", b"--", b"\r\n--", b"\r\n\r\n--x--\r\n",
                                     bytes(range(256)) * 3])
def test_the_part_is_the_file_at_every_split(content):
    content_type, body = form_body(content)
    boundary = upload.boundary(content_type)
    assert boundary and boundary in body
    for cut in range(len(body) + 1):                   # two chunks, cut at every byte
        assert read(content_type, body, [cut]) == content, cut
    assert read(content_type, body, [1] * len(body)) == content   # one byte at a time


def test_random_binary_files_in_random_chunks():
    rng = random.Random(0)
    for _ in range(200):
        content = bytes(rng.choice(b"\r\n-ab\x00\xff") for _ in range(rng.randint(0, 300)))
        content_type, body = form_body(content, field=rng.choice(["file", "adapter", "x"]))
        assert read(content_type, body, splits(rng.randint(0, 60), rng)) == content


def test_a_hand_written_body_with_preamble_padding_epilogue_and_no_headers():
    body = (b"this preamble is ignored\r\n--b0und\t \r\n\r\n"
            b"\r\n--b0un not the boundary\r\n"
            b"\r\n--b0und--\r\nand an epilogue")
    assert read('multipart/form-data; charset=utf-8; boundary="b0und"', body) == b"\r\n--b0un not the boundary\r\n"


def test_the_raw_body_is_the_file():
    data = os.urandom(1000)
    for content_type in ("application/octet-stream", "", "application/x-www-form-urlencoded"):
        assert read(content_type, data, [10, 500]) == data


@pytest.mark.parametrize(("body", "message"), [
    (b"--B--\r\n", "holds no part"),
    (b"no boundary at all", "holds no part"),
    (b"--B\r\n\r\none\r\n--B\r\n\r\ntwo\r\n--B--\r\n", "more than one part"),
    (b"--B\r\n\r\ncut short", "ends before its closing boundary"),
    (b"--B\r\ncontent-disposition: form-data; name=file", "ends before its closing boundary"),
    (b"--Bjunk\r\n\r\nx\r\n--B--", "followed by unexpected bytes"),
    (b"--B\r\n" + b"x-pad: " + b"a" * (upload.MAX_HEADERS + 10), "headers are over"),
])
def test_malformed_bodies_are_refused_with_what_to_send(body, message):
    with pytest.raises(upload.UploadError, match=message):
        read("multipart/form-data; boundary=B", body)


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=",
                                          "multipart/form-data; boundary=" + "b" * 71])
def test_a_multipart_type_without_a_usable_boundary_is_refused(content_type):
    with pytest.raises(upload.UploadError, match="boundary parameter"):
        upload.reader(content_type, LIMIT)


def test_the_limit_counts_the_file_not_its_wrapping():
    content_type, body = form_body(b"a" * LIMIT)
    assert len(body) > LIMIT and read(content_type, body) == b"a" * LIMIT
    content_type, body = form_body(b"a" * (LIMIT + 1))
    with pytest.raises(upload.TooLarge, match=f"over the limit of {LIMIT} bytes"):
        read(content_type, body, [100] * 50)
    with pytest.raises(upload.TooLarge):
        read("application/octet-stream", b"a" * (LIMIT + 1), [LIMIT, 1])
    assert upload.body_limit(content_type, LIMIT) == LIMIT + upload.OVERHEAD
    assert upload.body_limit("application/octet-stream", LIMIT) == LIMIT


def test_an_endless_preamble_is_cut_off():
    reader = upload.reader("multipart/form-data; boundary=B", LIMIT)
    with pytest.raises(upload.TooLarge):
        for _ in range(LIMIT + upload.OVERHEAD):
            reader.feed(b"x" * 64)
