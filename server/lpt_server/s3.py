"""A small S3 client: the few calls the adapter store makes, signed with AWS Signature V4 over httpx.

    client = S3Client(S3Config.from_env(), bucket="adapters", timeout_s=5)
    etag = client.put("a/current", b"...", if_none_match=True)   # 412 -> PreconditionFailed
    obj = client.get("a/current")                                  # None when absent
    client.delete("a/current", if_match=obj.etag)
    for item in client.list("a/"): ...

Why not boto3: the store needs four calls, and boto3 with botocore and s3transfer adds about
32 MB to an image for them; SigV4 is a few lines of hashlib/hmac and httpx is already a dependency.

Written for AWS S3 and the S3-compatible servers (MinIO, Ceph RGW, Cloudflare R2, SeaweedFS;
the tests use SeaweedFS): path-style addressing (https://ENDPOINT/BUCKET/KEY) when an endpoint
is set, virtual-hosted (https://BUCKET.s3.REGION.amazonaws.com/KEY) on AWS itself. A call ends
within its timeout (plus 1 s per 2 MiB of the length its answer declares), retries and the whole
answer included (httpx's timeouts bound each wait for
a byte, so a server that trickles its answer, or answers slowly after a refused first try, held
a call for several timeouts). A failed connection, a timeout or a 5xx raises Unreachable (a read
is tried up to three times first, while time is left); any other unexpected answer S3Error.
The client is synchronous: callers run it in a thread, never on an event loop.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import socket
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Iterator, Mapping
from urllib.parse import quote, urlsplit

import httpx

from .aws_credentials import (CredentialSource, Credentials, CredentialsUnavailable, credential_source, endpoint_url,
                              region, static)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
READ_RETRY_PAUSES_S = (0.05, 0.2)     # a read is tried up to three times
MIN_BYTES_PER_S = 2 << 20             # a call's deadline grows by 1 s per 2 MiB its answer declares
SMALL_OBJECT_BYTES = 64 << 10         # what a GET reads unless told more (pointers, the store's marker)
LISTING_PAGE_BYTES = 16 << 20         # a ListObjectsV2 page of 1,000 keys is well under 1 MiB
ERROR_BODY_BYTES = 64 << 10           # an error answer is read this far (its Code and Message)


class S3Error(Exception):
    """The S3 server answered, but not as expected (bad credentials, no such bucket, ...)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}" if message else f"{status} {code}")
        self.status, self.code = status, code


class Unreachable(Exception):
    """No answer from the S3 server (connection refused, timeout) or a 5xx."""


class PreconditionFailed(Exception):
    """A conditional write or delete lost: the object changed (or appeared) since it was read."""


class TooLarge(Exception):
    """An object larger than the caller reads: the answer was dropped at the limit (or before
    it began, when its length was declared)."""

    def __init__(self, key: str, limit: int, size: int | None, etag: str = ""):
        super().__init__(f"{key} is {f'{size} bytes' if size is not None else 'larger'}, over the "
                         f"{limit} bytes read")
        self.key, self.limit, self.size, self.etag = key, limit, size, etag


@dataclass(frozen=True)
class S3Config:
    endpoint: str | None       # None: AWS itself, virtual-hosted
    region: str
    credentials: CredentialSource

    @classmethod
    def with_keys(cls, endpoint: str | None, region: str, access_key: str, secret_key: str) -> "S3Config":
        return cls(endpoint, region, static(access_key, secret_key))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, timeout_s: float = 5.0) -> "S3Config":
        """The standard AWS variables: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_REGION (or
        AWS_DEFAULT_REGION), and credentials from the SDKs' chain (aws_credentials.py).
        ValueError for a bad endpoint, NoCredentials where no source is configured."""
        endpoint = endpoint_url(env, "S3")
        if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ValueError(f"AWS_ENDPOINT_URL must start with http:// or https://, got {endpoint!r}")
        return cls(endpoint=endpoint, region=region(env), credentials=credential_source(env, timeout_s))


def _uri_encode(text: str, safe: str) -> str:
    return quote(text, safe=safe + "-_.~")


def sign(method: str, url: str, headers: dict[str, str], payload_sha256: str, creds: Credentials, region: str,
         now: datetime) -> dict[str, str]:
    """The headers to send: `headers` plus host, x-amz-date, x-amz-content-sha256 (and the
    session token) and the SigV4 Authorization over all of them. `url`'s path and query must be
    encoded already (as they go on the wire)."""
    parts = urlsplit(url)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    out = {**headers, "host": parts.netloc, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256}
    if creds.session_token:
        out["x-amz-security-token"] = creds.session_token
    lowered = {k.lower(): " ".join(str(v).split()) for k, v in out.items()}
    signed = sorted(lowered)
    query = "&".join(sorted(parts.query.split("&"), key=lambda kv: kv.split("=", 1))) if parts.query else ""
    canonical = "\n".join([method, parts.path or "/", query, *(f"{k}:{lowered[k]}" for k in signed), "",
                           ";".join(signed), payload_sha256])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds.secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={';'.join(signed)}, Signature={signature}")
    return out


@dataclass(frozen=True)
class Answer:
    """An S3 server's answer, read whole."""

    status_code: int
    reason_phrase: str
    headers: httpx.Headers
    content: bytes


@dataclass(frozen=True)
class Object:
    body: bytes
    etag: str


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: float     # seconds since the epoch, the server's clock
    etag: str = ""      # as a GET of the object would give it ("" if the server lists none)


class S3Client:
    def __init__(self, cfg: S3Config, bucket: str, timeout_s: float = 5.0,
                 transport: httpx.BaseTransport | None = None):
        self.cfg, self.bucket = cfg, bucket
        if cfg.endpoint:
            self.base = f"{cfg.endpoint}/{_uri_encode(bucket, '')}"
        else:
            self.base = f"https://{bucket}.s3.{cfg.region}.amazonaws.com"
        self.endpoint = cfg.endpoint or self.base
        self.timeout_s = timeout_s
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s), transport=transport)
        self.server_time: float | None = None    # the Date of the last answer (for ages of objects)

    def close(self) -> None:
        self.http.close()

    # ---- the calls ------------------------------------------------------------------------------
    def get(self, key: str, max_bytes: int | None = SMALL_OBJECT_BYTES) -> Object | None:
        """The object, or None; TooLarge past max_bytes (nothing more is read; None: no bound)."""
        r = self._send("GET", key, max_bytes=max_bytes)
        if r.status_code == 404:
            return None
        self._expect(r, 200)
        return Object(r.content, r.headers.get("etag", ""))

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str:
        """Write `data`; with if_match only over that ETag, with if_none_match only if absent."""
        headers = {"content-type": "application/octet-stream", "content-length": str(len(data))}
        if if_match is not None:
            headers["if-match"] = if_match
        if if_none_match:
            headers["if-none-match"] = "*"
        r = self._send_small("PUT", key, SMALL_OBJECT_BYTES, "InvalidAnswer", "the answer to a PUT", headers=headers,
                             body=data)
        if r.status_code == 412 or (if_match is not None and r.status_code == 404):
            raise PreconditionFailed(key)
        if r.status_code == 409 and (if_match is not None or if_none_match):   # a concurrent conditional write
            raise PreconditionFailed(key)
        self._expect(r, 200)
        return r.headers.get("etag", "")

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        r = self._send_small("DELETE", key, SMALL_OBJECT_BYTES, "InvalidAnswer", "the answer to a DELETE",
                             headers={"if-match": if_match} if if_match is not None else {})
        if if_match is not None and r.status_code in (404, 412):
            raise PreconditionFailed(key)
        self._expect(r, 204, 200, 404)

    def list(self, prefix: str, max_keys: int | None = None) -> Iterator[Listed]:
        """Every object under `prefix` (ListObjectsV2, page by page)."""
        token = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            if max_keys:
                query["max-keys"] = str(max_keys)
            r = self._send_small("GET", "", LISTING_PAGE_BYTES, "InvalidListing", "a listing page", query=query)
            self._expect(r, 200)
            root, page = _listing(r)
            yield from page
            token = root.findtext(f"{NS}NextContinuationToken")
            if max_keys or root.findtext(f"{NS}IsTruncated") != "true" or not token:
                return

    def _send_small(self, method: str, key: str, max_bytes: int, code: str, what: str, **kwargs) -> Answer:
        """A call whose answer S3 keeps small (a write's, a listing page): one over max_bytes (a
        proxy's page) means no S3 server answered: S3Error `code`, not TooLarge."""
        try:
            return self._send(method, key, max_bytes=max_bytes, **kwargs)
        except TooLarge:
            raise S3Error(200, code, f"{what} is over {max_bytes} bytes: not an S3 server's") from None

    # ---- the wire -------------------------------------------------------------------------------
    def _send(self, method: str, key: str, *, headers: dict[str, str] | None = None, body: bytes = b"",
              query: dict[str, str] | None = None, max_bytes: int | None = SMALL_OBJECT_BYTES) -> Answer:
        url = self.base + "/" + _uri_encode(key, "/") if key else self.base + "/"
        if query:
            url += "?" + "&".join(f"{_uri_encode(k, '')}={_uri_encode(v, '')}" for k, v in sorted(query.items()))
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        # Reads are retried after a 5xx (S3's SlowDown / InternalError) or a refused or dropped
        # connection, as the AWS SDKs do; not after a timeout (that already cost its wait), and
        # writes never (a conditional write that did land would then look like a lost race).
        pauses = READ_RETRY_PAUSES_S if method == "GET" else ()
        try:                       # before the call's clock starts: a fetch has its own timeout
            creds = self.cfg.credentials.get()
        except CredentialsUnavailable as e:
            raise Unreachable(str(e)) from None
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(len(pauses) + 1):
            signed = sign(method, url, headers or {}, payload, creds, self.cfg.region, datetime.now(timezone.utc))
            signed.pop("host")      # httpx sets Host from the URL (the same value)
            try:
                r = self._exchange(method, url, signed, body, deadline, max_bytes)
            except httpx.HTTPError as e:
                failure = Unreachable(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
                failure.__cause__ = e
                if isinstance(e, httpx.TimeoutException):
                    raise failure
            else:
                if r.status_code < 500:
                    break
                failure = Unreachable(f"{r.status_code} from the S3 server: {_error(r)[1] or r.reason_phrase}")
            if attempt == len(pauses) or time.monotonic() + pauses[attempt] >= deadline:
                raise failure
            time.sleep(pauses[attempt])
        date = r.headers.get("date")
        if date:
            try:
                self.server_time = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                pass
        return r

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes, deadline: float,
                  max_bytes: int | None) -> Answer:
        """One request and its whole answer, by `deadline` (httpx.ReadTimeout past it); a 2xx answer
        over max_bytes raises TooLarge, an error answer is read up to ERROR_BODY_BYTES."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise httpx.ConnectTimeout(f"no time left of the call's {self.timeout_s:g} s")
        request = self.http.build_request(method, url, headers=headers, content=body or None,
                                          timeout=httpx.Timeout(left))
        r = self.http.send(request, stream=True)
        ok = 200 <= r.status_code < 300
        limit = (max_bytes if max_bytes is not None else math.inf) if ok else ERROR_BODY_BYTES
        declared = _length(r.headers)

        def too_large(size: int | None) -> TooLarge:
            return TooLarge(urlsplit(url).path, limit, size, r.headers.get("etag", ""))
        if ok and declared is not None and declared > limit:
            r.close()
            raise too_large(declared)
        # a large object over a slow link gets time for its declared length (an adapter file of
        # 64 MiB at 5 s would need 13 MiB/s), never more than that: a trickle is still cut
        deadline += min(declared or 0, limit) / MIN_BYTES_PER_S
        # the body: httpx waits up to `left` for each read, however late it already is, so a
        # watchdog shuts the socket at the deadline (which wakes a blocked read)
        late = threading.Event()
        watchdog = threading.Timer(max(deadline - time.monotonic(), 0), _cut, (r, late))
        watchdog.start()
        try:
            chunks, size = [], 0
            try:
                for chunk in r.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        if ok:
                            raise too_large(None)
                        break       # enough of an error answer to read its Code
                    if time.monotonic() > deadline:
                        late.set()
                        break
            except httpx.HTTPError:
                if not late.is_set():
                    raise
            if late.is_set():
                raise httpx.ReadTimeout(f"the answer was still arriving after {self.timeout_s:g} s",
                                        request=request)
        finally:
            watchdog.cancel()
            r.close()
        return Answer(r.status_code, r.reason_phrase, r.headers, b"".join(chunks))

    @staticmethod
    def _expect(r: Answer, *ok: int) -> None:
        if r.status_code not in ok:
            code, message = _error(r)
            raise S3Error(r.status_code, code or r.reason_phrase, message)


def _length(headers: httpx.Headers) -> int | None:
    """The declared Content-Length, or None (absent, or not a number)."""
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


def _cut(r: httpx.Response, late: threading.Event) -> None:
    """Shut the socket under a response still being read (from the watchdog's thread)."""
    late.set()
    stream = r.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _listing(r: Answer) -> tuple[ET.Element, list[Listed]]:
    """A ListObjectsV2 page; S3Error where the body is not one (a proxy's HTML page, a cut-off
    answer): a store that answers nonsense is as unusable as one that answers 5xx."""
    try:
        root = ET.fromstring(r.content)
        if root.tag != f"{NS}ListBucketResult":        # well-formed but something else: not "no objects"
            raise ValueError(f"its root element is <{root.tag}>")
        page = []
        for c in root.iter(f"{NS}Contents"):
            modified = datetime.fromisoformat(c.findtext(f"{NS}LastModified", "").replace("Z", "+00:00"))
            page.append(Listed(c.findtext(f"{NS}Key", ""), int(c.findtext(f"{NS}Size", "0")), modified.timestamp(),
                               c.findtext(f"{NS}ETag", "")))
    except (ET.ParseError, ValueError) as e:
        raise S3Error(r.status_code, "InvalidListing", f"the answer to a listing is not a ListObjectsV2 page ({e}): "
                      f"{r.content[:80]!r}") from None
    return root, page


def _error(r: Answer) -> tuple[str, str]:
    """(Code, Message) of an S3 error body, or empty strings."""
    try:
        root = ET.fromstring(r.content)
    except ET.ParseError:
        return "", ""
    return root.findtext("Code", ""), root.findtext("Message", "")
