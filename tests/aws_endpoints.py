"""Stand-ins for the AWS credential endpoints (STS, the container endpoint, EC2 instance metadata)
on loopback: real HTTP servers answering as the documented APIs do, recording each request."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


Answer = tuple[int, str, str]          # status, content type, body


class Endpoint:
    """`answer(seen) -> (status, content type, body)` for every request, on 127.0.0.1."""

    def __init__(self, answer: Callable[[Seen], Answer]):
        self.answer, self.seen = answer, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                outer.seen.append(seen)
                status, ctype, text = outer.answer(seen)
                data = text.encode()
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def expiring_in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def sts_credentials(key: str, secret: str, token: str, expires_in_s: float = 3600) -> Answer:
    return 200, "text/xml", f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>
      <SessionToken>{token}</SessionToken><Expiration>{expiring_in(expires_in_s)}</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"""


def sts_refusal(code: str = "AccessDenied", message: str = "Not authorized to perform sts:AssumeRoleWithWebIdentity"
                ) -> Answer:
    return 403, "text/xml", f"""<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
</ErrorResponse>"""


def json_credentials(key: str, secret: str, token: str, expires_in_s: float = 3600) -> Answer:
    return 200, "application/json", (f'{{"AccessKeyId": "{key}", "SecretAccessKey": "{secret}", "Token": "{token}", '
                                     f'"Expiration": "{expiring_in(expires_in_s)}"}}')
