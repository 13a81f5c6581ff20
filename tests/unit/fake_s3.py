"""An in-memory S3 behind httpx.MockTransport, for the fast unit tests only (the real server,
SeaweedFS, runs in the integration and e2e tests). It checks nothing of the signature; it can
go down (connection refused), answer the next requests with 503 (`busy`), ignore conditional
headers (a server without conditional writes), fail every conditional write (other writers
always ahead) or answer listings with a body that is not one (`listing_body`)."""
from __future__ import annotations

import hashlib
import time
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from lpt_server.s3 import S3Client, S3Config


class FakeS3:
    def __init__(self, bucket: str = "b"):
        self.bucket = bucket
        self.objects: dict[str, tuple[bytes, str, float]] = {}
        self.down = False
        self.busy = 0          # the next this many requests answer 503 SlowDown
        self.ignore_conditions = False
        self.always_412 = False
        self.listing_body: bytes | None = None     # what a listing answers instead (200), if set
        self.calls: list[tuple[str, str]] = []

    def client(self, timeout_s: float = 1.0) -> S3Client:
        cfg = S3Config.with_keys("http://fake-s3.test", "us-east-1", "key", "secret")
        return S3Client(cfg, self.bucket, timeout_s, transport=httpx.MockTransport(self.handle))

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.busy > 0:
            self.busy -= 1
            self.calls.append((request.method, "503"))
            return httpx.Response(503, content=b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>")
        url = urlsplit(str(request.url))
        path = unquote(url.path).split("/", 2)
        assert path[1] == self.bucket and "authorization" in request.headers
        key = path[2] if len(path) > 2 else ""
        self.calls.append((request.method, key))
        now = formatdate(usegmt=True)
        if request.method == "GET" and not key:
            if self.listing_body is not None:
                return httpx.Response(200, content=self.listing_body, headers={"date": now})
            return self._list(parse_qs(url.query)["prefix"][0], now)
        have = self.objects.get(key)
        match, none_match = request.headers.get("if-match"), request.headers.get("if-none-match")
        if request.method in ("PUT", "DELETE") and not self.ignore_conditions:
            if self.always_412 and (match or none_match):
                return httpx.Response(412)
            if match is not None and (have is None or have[1] != match):
                return httpx.Response(412 if have is not None or request.method == "PUT" else 404)
            if none_match == "*" and have is not None:
                return httpx.Response(412)
        if request.method == "GET":
            if have is None:
                return httpx.Response(404, headers={"date": now})
            return httpx.Response(200, content=have[0], headers={"etag": have[1], "date": now})
        if request.method == "PUT":
            body = request.read()
            etag = '"' + hashlib.md5(body).hexdigest() + '"'
            self.objects[key] = (body, etag, time.time())
            return httpx.Response(200, headers={"etag": etag, "date": now})
        if request.method == "DELETE":
            self.objects.pop(key, None)
            return httpx.Response(204, headers={"date": now})
        return httpx.Response(405)

    def _list(self, prefix: str, now: str) -> httpx.Response:
        items = "".join(f"<Contents><Key>{k}</Key><Size>{len(v[0])}</Size><LastModified>"
                        f"{time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(v[2]))}</LastModified>"
                        f"<ETag>{v[1].replace(chr(34), '&quot;')}</ETag></Contents>"
                        for k, v in sorted(self.objects.items()) if k.startswith(prefix))
        xml = ('<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
               f"<IsTruncated>false</IsTruncated>{items}</ListBucketResult>")
        return httpx.Response(200, content=xml.encode(), headers={"date": now})
