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

Temporary credentials are fetched again 5 minutes before they expire; while a refresh fails and
the old ones are still valid, they are used on. A source that cannot give credentials raises
NoCredentials (said once at start, as the store's refusal) or CredentialsUnavailable (a
refresh that failed once the old ones expired: the store is then down, 503, until it works).
"""
from __future__ import annotations

import configparser
import json
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlencode

import httpx

log = logging.getLogger("lpt_server.aws_credentials")

REFRESH_AHEAD_S = 300.0        # fetch new temporary credentials this long before they expire
SESSION_NAME = "lpt-serve"
STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"
ECS_HOST = "http://169.254.170.2"
IMDS = "http://169.254.169.254"


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

    def fresh(self, now: float) -> bool:
        return self.expires is None or now < self.expires - REFRESH_AHEAD_S

    def valid(self, now: float) -> bool:
        return self.expires is None or now < self.expires


class CredentialSource:
    """Credentials from `fetch`, kept until REFRESH_AHEAD_S before they expire."""

    def __init__(self, name: str, fetch: Callable[[], Credentials]):
        self.name, self._fetch = name, fetch
        self._held: Credentials | None = None
        self._lock = threading.Lock()

    def get(self) -> Credentials:
        now, held = time.time(), self._held
        if held is not None and held.fresh(now):
            return held
        if held is not None and held.valid(now):
            if not self._lock.acquire(blocking=False):
                return held                   # another call is refreshing them meanwhile
        else:
            self._lock.acquire()
        try:
            now = time.time()
            if self._held is not None and self._held.fresh(now):
                return self._held
            try:
                self._held = self._fetch()
            except (NoCredentials, httpx.HTTPError, OSError, ValueError, KeyError, ET.ParseError) as e:
                why = str(e) if isinstance(e, NoCredentials) else f"{type(e).__name__}: {e}" if str(e) \
                    else type(e).__name__
                if self._held is not None and self._held.valid(now):
                    log.warning("refreshing the store's %s credentials failed (%s); using the current ones "
                                "until they expire", self.name, why)
                    return self._held
                if self._held is None and isinstance(e, NoCredentials):
                    raise                      # never had any: a setup to fix, said at start
                raise CredentialsUnavailable(f"the {self.name} credentials could not be fetched: {why}") from None
            return self._held
        finally:
            self._lock.release()


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


def _expiry(text: str) -> float:
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()


def _web_identity(env: Mapping[str, str], timeout_s: float) -> Credentials:
    path = env["AWS_WEB_IDENTITY_TOKEN_FILE"]
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise NoCredentials(f"AWS_WEB_IDENTITY_TOKEN_FILE {path}: {e.strerror or e}") from None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = (env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL")
                or f"https://sts.{region}.amazonaws.com").rstrip("/")
    form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": env["AWS_ROLE_ARN"],
            "RoleSessionName": env.get("AWS_ROLE_SESSION_NAME") or SESSION_NAME, "WebIdentityToken": token}
    # unsigned: the token is the proof
    r = httpx.post(endpoint + "/", content=urlencode(form),
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
    path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials").expanduser()
    profile = env.get("AWS_PROFILE") or "default"
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text())
    except (OSError, configparser.Error):
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


def _json_credentials(r: httpx.Response, where: str) -> Credentials:
    if r.status_code >= 500:
        raise httpx.HTTPStatusError(f"{r.status_code} from {where}", request=r.request, response=r)
    if r.status_code != 200:
        raise NoCredentials(f"{where} refused the credentials request: {r.status_code} {r.text[:200]}")
    d = json.loads(r.content[:1 << 20])
    return Credentials(d["AccessKeyId"], d["SecretAccessKey"], d.get("Token") or d.get("SessionToken"),
                       _expiry(d["Expiration"]) if d.get("Expiration") else None)


def _container(env: Mapping[str, str], timeout_s: float) -> Credentials:
    url = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or ECS_HOST + env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
    headers = {}
    token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    if token_file:
        try:
            headers["Authorization"] = Path(token_file).read_text().strip()
        except OSError as e:
            raise NoCredentials(f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {token_file}: {e.strerror or e}") from None
    elif env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"):
        headers["Authorization"] = env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    return _json_credentials(httpx.get(url, headers=headers, timeout=timeout_s), f"the container credentials at {url}")


def _instance_role(env: Mapping[str, str], timeout_s: float) -> Credentials:
    base = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS).rstrip("/")
    try:
        token = httpx.put(f"{base}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
                          timeout=timeout_s)
        headers = {"X-aws-ec2-metadata-token": token.text} if token.status_code == 200 else {}
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
