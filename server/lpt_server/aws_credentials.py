"""Where an s3:// store's credentials come from: the AWS SDKs' default chain, minus what a
server does not need.

    source = credential_source(os.environ, timeout_s=5)   # chosen once, at start
    creds = source.get()                                   # before each signed call: refreshed
                                                           # ahead of expiry, thread-safe

The first source that is configured wins, in the SDKs' order:

1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`): static.
2. `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` (EKS IRSA, any OIDC identity): STS
   AssumeRoleWithWebIdentity with the token read from the file at each refresh (Kubernetes
   rotates it), at `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL` (MinIO serves STS on its own
   endpoint), else sts.REGION.amazonaws.com.
3. The shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default ~/.aws/credentials),
   profile `AWS_PROFILE` (default `default`), when it has that profile: static keys.
4. `AWS_CONTAINER_CREDENTIALS_FULL_URI` or `..._RELATIVE_URI` (ECS task roles, EKS Pod
   Identity), with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or `..._TOKEN` when set.
5. The EC2 instance role through IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, default
   http://169.254.169.254), unless `AWS_EC2_METADATA_DISABLED=true`.

Temporary credentials are renewed 5 minutes before they expire (halfway through a shorter life),
on a thread of their own while the held ones serve on; a renewal that fails is tried again every
10 s until they expire. A source that cannot give credentials raises NoCredentials (said once at
start, as the store's refusal) or CredentialsUnavailable (none valid and the source not
answering: the store is then down, 503, until it does).
"""
from __future__ import annotations

import configparser
import ipaddress
import json
import logging
import math
import os
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlencode, urlsplit

import httpx

log = logging.getLogger("lpt_server.aws_credentials")

REFRESH_AHEAD_S = 300.0        # fetch new temporary credentials this long before they expire
RETRY_AFTER_S = 10.0           # a failed fetch is not tried again sooner
SESSION_NAME = "lpt-serve"
STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"
ECS_HOST = "http://169.254.170.2"
IMDS = "http://169.254.169.254"


def _clock() -> float:
    """Seconds since the epoch, as credentials' expiry times are given (the tests move it)."""
    return time.time()


class NoCredentials(Exception):
    """No source gives credentials (or the configured one refuses): a setup to fix."""


class CredentialsUnavailable(Exception):
    """The source did not answer and the credentials held have expired: retry later."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None
    expires: float | None = None         # seconds since the epoch; None: never

    def __post_init__(self):
        if not isinstance(self.access_key, str) or not self.access_key or not isinstance(self.secret_key, str) \
                or not self.secret_key:
            raise ValueError("the answer holds no access key id and secret access key")
        if self.session_token is not None and not isinstance(self.session_token, str):
            raise ValueError("the answer's session token is not a string")

    def valid(self, now: float) -> bool:
        return self.expires is None or now < self.expires


class CredentialSource:
    """Credentials from `fetch`, renewed REFRESH_AHEAD_S before they expire (or halfway through
    their life, if that is shorter). While the held ones are valid, renewal runs on a thread of
    its own and callers go on with them: a slow or refused source never delays a call, and a
    failed renewal is tried again RETRY_AFTER_S later. Without valid credentials a caller
    fetches (one at a time); that failure is answered again for RETRY_AFTER_S without asking the
    source, so that threads waiting for it do not each ask in turn."""

    def __init__(self, name: str, fetch: Callable[[], Credentials]):
        self.name, self._fetch = name, fetch
        self._held: Credentials | None = None
        self._renew_at = 0.0
        # (when, class, message) of the last failed fetch without valid credentials: a new
        # exception is raised from it each time (one raised again would keep every caller's frames)
        self._failed: tuple[float, type[Exception], str] | None = None
        self._renew_failed_at = -math.inf      # the last failed background renewal
        self._renewing = False
        self._lock = threading.Lock()          # one fetch at a time
        self._state = threading.Lock()         # the fields above

    def get(self) -> Credentials:
        now, held = _clock(), self._held
        if held is not None and held.valid(now):
            if now >= self._renew_at:
                self._renew_in_background(now)
            return held
        with self._lock:
            now = _clock()
            if self._held is not None and self._held.valid(now):
                return self._held
            failed = self._failed
            if failed is not None and now - failed[0] < RETRY_AFTER_S:
                raise failed[1](failed[2])
            try:
                return self._take(self._fetch())
            except Exception as e:
                error = self._failure(e)
                with self._state:
                    self._failed = (_clock(), type(error), str(error))
                raise error from None

    def _take(self, creds: Credentials) -> Credentials:
        """Hold `creds` (call with _lock held); ones already expired are a failure."""
        now = _clock()
        if not creds.valid(now):
            raise CredentialsUnavailable(f"the {self.name} credentials came expired (they expire at "
                                         f"{creds.expires:.0f}, the clock reads {now:.0f}: check the clock)")
        with self._state:
            self._held, self._failed, self._renew_failed_at = creds, None, -math.inf
            self._renew_at = (math.inf if creds.expires is None else
                              creds.expires - min(REFRESH_AHEAD_S, max(creds.expires - now, 0) / 2))
        return creds

    def _failure(self, e: Exception) -> Exception:
        """NoCredentials while none were ever had (a setup to fix, said at start); afterwards
        CredentialsUnavailable (the store is down until the source answers again)."""
        if isinstance(e, CredentialsUnavailable) or (isinstance(e, NoCredentials) and self._held is None):
            return e
        why = str(e) if isinstance(e, NoCredentials) else f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return CredentialsUnavailable(f"the {self.name} credentials could not be fetched: {why}")

    def _renew_in_background(self, now: float) -> None:
        with self._state:
            if self._renewing or now - self._renew_failed_at < RETRY_AFTER_S:
                return
            self._renewing = True
        try:
            threading.Thread(target=self._renew, name="lpt-credentials", daemon=True).start()
        except RuntimeError as e:              # no thread to be had: the held ones serve on
            with self._state:
                self._renewing, self._renew_failed_at = False, now
            log.warning("renewing the store's %s credentials could not start (%s); tried again in %g s",
                        self.name, e, RETRY_AFTER_S)

    def _renew(self) -> None:
        try:
            with self._lock:
                if _clock() < self._renew_at:      # a caller without valid ones renewed them meanwhile
                    return
                try:
                    self._take(self._fetch())
                except Exception as e:
                    error = self._failure(e)
                    with self._state:
                        self._renew_failed_at = _clock()
                    log.warning("renewing the store's %s credentials failed (%s); the current ones serve until "
                                "they expire, and renewal is tried again in %g s", self.name, error, RETRY_AFTER_S)
        finally:
            with self._state:
                self._renewing = False


def static(access_key: str, secret_key: str, session_token: str | None = None,
           name: str = "AWS_ACCESS_KEY_ID") -> CredentialSource:
    creds = Credentials(access_key, secret_key, session_token or None)
    return CredentialSource(name, lambda: creds)


def credential_source(env: Mapping[str, str] = os.environ, timeout_s: float = 5.0) -> CredentialSource:
    """The first configured source of the chain (module docstring). NoCredentials if none is."""
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_SECRET_ACCESS_KEY"):
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(k)]
        if missing:
            raise NoCredentials(f"an s3:// store needs credentials: set {' and '.join(missing)}")
        return static(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN"))
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        if not env.get("AWS_ROLE_ARN"):
            raise NoCredentials("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not: set the role to assume")
        return CredentialSource("web identity", lambda: _web_identity(env, timeout_s))
    shared = _shared_file(env)
    if shared is not None:
        return shared
    if env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        return CredentialSource("container", lambda: _container(env, timeout_s))
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true":
        return CredentialSource("EC2 instance role", lambda: _instance_role(env, min(timeout_s, 2.0)))
    raise NoCredentials("an s3:// store needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                        "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, or AWS_PROFILE with ~/.aws/credentials, "
                        "or run with a container or instance role")


def region(env: Mapping[str, str]) -> str:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def endpoint_url(env: Mapping[str, str], service: str) -> str | None:
    """The SDKs' endpoint override: AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL (every
    service: MinIO serves S3 and STS on one address); None for AWS itself."""
    url = env.get(f"AWS_ENDPOINT_URL_{service}") or env.get("AWS_ENDPOINT_URL")
    return url.rstrip("/") if url else None


def _expiry(text: object) -> float:
    if not isinstance(text, str):
        raise ValueError(f"the credentials' Expiration is {text!r}, not a time")
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()


def _web_identity(env: Mapping[str, str], timeout_s: float) -> Credentials:
    path = env["AWS_WEB_IDENTITY_TOKEN_FILE"]
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise NoCredentials(f"AWS_WEB_IDENTITY_TOKEN_FILE {path}: {e.strerror or e}") from None
    endpoint = endpoint_url(env, "STS") or f"https://sts.{region(env)}.amazonaws.com"
    form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": env["AWS_ROLE_ARN"],
            "RoleSessionName": env.get("AWS_ROLE_SESSION_NAME") or SESSION_NAME, "WebIdentityToken": token}
    # unsigned: the token is the proof
    r = _ask("POST", endpoint + "/", content=urlencode(form),
             headers={"content-type": "application/x-www-form-urlencoded"}, timeout=timeout_s)
    if r.status_code >= 500:
        raise httpx.HTTPStatusError(f"{r.status_code} from STS at {endpoint}", request=r.request, response=r)
    root = ET.fromstring(r.content[:1 << 20])
    if r.status_code != 200:
        code = root.findtext(f".//{STS_NS}Code") or root.findtext(".//Code") or str(r.status_code)
        message = root.findtext(f".//{STS_NS}Message") or root.findtext(".//Message") or ""
        raise NoCredentials(f"STS at {endpoint} refused AssumeRoleWithWebIdentity for {env['AWS_ROLE_ARN']}: "
                            f"{code} {message}".rstrip())
    c = root.find(f".//{STS_NS}Credentials")
    if c is None:
        c = root.find(".//Credentials")
    if c is None:
        raise ValueError(f"STS at {endpoint} answered without credentials")
    ns = STS_NS if c.tag.startswith(STS_NS) else ""
    return Credentials(c.findtext(f"{ns}AccessKeyId"), c.findtext(f"{ns}SecretAccessKey"),
                       c.findtext(f"{ns}SessionToken"), _expiry(c.findtext(f"{ns}Expiration")))


def _shared_file(env: Mapping[str, str]) -> CredentialSource | None:
    named = env.get("AWS_PROFILE")
    profile = named or "default"
    try:
        path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials").expanduser()
        text = path.read_text()
    except (OSError, RuntimeError) as e:          # RuntimeError: no home directory
        if named:
            raise NoCredentials(f"AWS_PROFILE {named!r}: the shared credentials file cannot be read ({e})") from None
        return None
    parser = configparser.ConfigParser(interpolation=None)     # a secret may hold a '%'
    try:
        parser.read_string(text)
    except configparser.Error as e:
        if named:
            raise NoCredentials(f"AWS_PROFILE {named!r}: {path} cannot be parsed ({e})") from None
        return None
    if not parser.has_section(profile):
        if env.get("AWS_PROFILE"):
            raise NoCredentials(f"AWS_PROFILE {profile!r} is not in {path}")
        return None
    section = parser[profile]
    if not section.get("aws_access_key_id") or not section.get("aws_secret_access_key"):
        raise NoCredentials(f"profile {profile!r} in {path} has no aws_access_key_id and aws_secret_access_key")
    return static(section["aws_access_key_id"], section["aws_secret_access_key"], section.get("aws_session_token"),
                  name=f"profile {profile}")


def _ask(method: str, url: str, **kwargs) -> httpx.Response:
    """An HTTP call whose failure to connect names where it went."""
    try:
        return httpx.request(method, url, **kwargs)
    except httpx.TransportError as e:
        raise type(e)(f"{e or type(e).__name__} ({method} {url})") from None


def _json_credentials(r: httpx.Response, where: str) -> Credentials:
    if r.status_code >= 500:
        raise httpx.HTTPStatusError(f"{r.status_code} from {where}", request=r.request, response=r)
    if r.status_code != 200:
        raise NoCredentials(f"{where} refused the credentials request: {r.status_code} {r.text[:200]}")
    d = json.loads(r.content[:1 << 20])
    if not isinstance(d, dict):
        raise ValueError(f"{where} answered {type(d).__name__}, not an object")
    return Credentials(d.get("AccessKeyId"), d.get("SecretAccessKey"), d.get("Token") or d.get("SessionToken"),
                       _expiry(d["Expiration"]) if d.get("Expiration") else None)


def _container(env: Mapping[str, str], timeout_s: float) -> Credentials:
    relative = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    url = ECS_HOST + relative if relative else env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and _local_host(parts.hostname or "")):
        raise NoCredentials(f"AWS_CONTAINER_CREDENTIALS_FULL_URI {url}: not https, and not the ECS or EKS "
                            "credentials address or a loopback one (the token must not go out in clear)")
    headers = {}
    token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    if token_file:
        try:
            headers["Authorization"] = Path(token_file).read_text().strip()
        except OSError as e:
            raise NoCredentials(f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {token_file}: {e.strerror or e}") from None
    elif env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"):
        headers["Authorization"] = env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    return _json_credentials(_ask("GET", url, headers=headers, timeout=timeout_s), f"the container credentials at {url}")


def _local_host(host: str) -> bool:
    """Where the SDKs send container credentials over plain http: loopback, ECS's and EKS Pod
    Identity's link-local addresses."""
    if host in ("localhost", "169.254.170.2", "169.254.170.23", "fd00:ec2::23"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _instance_role(env: Mapping[str, str], timeout_s: float) -> Credentials:
    base = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS).rstrip("/")
    try:
        try:
            token = httpx.put(f"{base}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
                              timeout=timeout_s)
            headers = {"X-aws-ec2-metadata-token": token.text} if token.status_code == 200 else {}
        except httpx.TimeoutException:         # a container past the token's hop limit: IMDSv1, as the SDKs do
            headers = {}
        roles = httpx.get(f"{base}/latest/meta-data/iam/security-credentials/", headers=headers, timeout=timeout_s)
    except httpx.TransportError as e:
        raise NoCredentials(f"no credentials: no AWS_ACCESS_KEY_ID, web identity, profile or container role, and no "
                            f"EC2 instance metadata at {base} ({type(e).__name__}); set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY (AWS_EC2_METADATA_DISABLED=true skips this lookup)") from None
    if roles.status_code != 200 or not roles.text.strip():
        raise NoCredentials(f"the EC2 instance at {base} has no role (metadata answered {roles.status_code})")
    role = roles.text.strip().splitlines()[0]
    return _json_credentials(httpx.get(f"{base}/latest/meta-data/iam/security-credentials/{role}", headers=headers,
                                       timeout=timeout_s), f"the EC2 instance metadata at {base}")
