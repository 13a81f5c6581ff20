"""Where an s3:// store's credentials come from: the AWS SDKs' chain (static keys, web identity,
a profile, the container endpoint, EC2 instance metadata), against real HTTP endpoints on
loopback that answer as the documented APIs do; refreshed ahead of expiry, kept through a
failed refresh while still valid, and signed into every S3 call."""
import time

import pytest

from aws_endpoints import Endpoint, json_credentials, sts_credentials, sts_refusal
from lpt_server import aws_credentials
from lpt_server.aws_credentials import (REFRESH_AHEAD_S, Credentials, CredentialsUnavailable, NoCredentials,
                                        credential_source)
from lpt_server.s3 import S3Client, S3Config, Unreachable

pytestmark = pytest.mark.unit
NO_IMDS = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


@pytest.fixture
def endpoints():
    made = []

    def make(answer):
        made.append(Endpoint(answer))
        return made[-1]
    yield make
    for e in made:
        e.close()


def web_identity_env(tmp_path, sts_url: str, token: str = "token-1") -> dict[str, str]:
    (tmp_path / "token").write_text(token + "\n")
    return {**NO_IMDS, "AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token"),
            "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/lpt", "AWS_ENDPOINT_URL_STS": sts_url,
            "AWS_REGION": "eu-west-3"}


def test_the_first_configured_source_wins_in_the_sdks_order(tmp_path):
    profile = tmp_path / "credentials"
    profile.write_text("[default]\naws_access_key_id = pk\naws_secret_access_key = ps\n"
                       "[ci]\naws_access_key_id = ck\naws_secret_access_key = cs\naws_session_token = ct\n")
    web = {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}
    container = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/creds"}
    files = {"AWS_SHARED_CREDENTIALS_FILE": str(profile)}
    keys = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    assert credential_source({**keys, **web, **files, **container}).get() == Credentials("k", "s")
    assert credential_source({**web, **files, **container}).name == "web identity"
    assert credential_source({**files, **container}).get() == Credentials("pk", "ps")
    assert credential_source({**files, "AWS_PROFILE": "ci"}).get() == Credentials("ck", "cs", "ct")
    assert credential_source({**container, **NO_IMDS}).name == "container"
    assert credential_source({"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}).name == "EC2 instance role"
    for env, message in [
        ({"AWS_ACCESS_KEY_ID": "k"}, "set AWS_SECRET_ACCESS_KEY"),
        ({"AWS_WEB_IDENTITY_TOKEN_FILE": "/t"}, "AWS_ROLE_ARN is not"),
        ({**files, "AWS_PROFILE": "nope"}, "AWS_PROFILE 'nope' is not in"),
        (NO_IMDS, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_WEB_IDENTITY_TOKEN_FILE"),
    ]:
        with pytest.raises(NoCredentials, match=message):
            credential_source(env)


def test_web_identity_assumes_the_role_with_the_token_read_at_each_refresh(tmp_path, endpoints):
    """An unsigned AssumeRoleWithWebIdentity with the file's token; credentials that expire
    within REFRESH_AHEAD_S are fetched again, with the token as the file holds it then."""
    sts = endpoints(lambda seen: sts_credentials(f"key-{len(sts.seen)}", "secret", "session",
                                                 expires_in_s=REFRESH_AHEAD_S - 60))
    env = web_identity_env(tmp_path, sts.url)
    source = credential_source(env)
    got = source.get()
    assert (got.access_key, got.secret_key, got.session_token) == ("key-1", "secret", "session")
    first = sts.seen[0]
    assert first.method == "POST" and "authorization" not in first.headers
    assert first.form == {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                          "RoleArn": "arn:aws:iam::123456789012:role/lpt", "RoleSessionName": "lpt-serve",
                          "WebIdentityToken": "token-1"}
    (tmp_path / "token").write_text("token-2")                # Kubernetes rotated it
    again = source.get()
    assert sts.seen[-1].form["WebIdentityToken"] == "token-2" and again.access_key == f"key-{len(sts.seen)}"
    assert abs(again.expires - (time.time() + REFRESH_AHEAD_S - 60)) < 5


def test_fresh_credentials_are_not_fetched_again(tmp_path, endpoints):
    sts = endpoints(lambda seen: sts_credentials("key", "secret", "session", expires_in_s=3600))
    source = credential_source(web_identity_env(tmp_path, sts.url))
    for _ in range(5):
        assert source.get().access_key == "key"
    assert len(sts.seen) == 1


def test_a_refused_web_identity_says_why_at_start(tmp_path, endpoints):
    sts = endpoints(lambda seen: sts_refusal("InvalidIdentityToken", "Couldn't retrieve verification key"))
    with pytest.raises(NoCredentials, match="refused AssumeRoleWithWebIdentity for arn:aws:iam::123456789012:role/lpt: "
                                            "InvalidIdentityToken Couldn't retrieve verification key"):
        credential_source(web_identity_env(tmp_path, sts.url)).get()


def test_a_failed_refresh_keeps_valid_credentials_then_the_store_is_unavailable(tmp_path, endpoints, monkeypatch,
                                                                                caplog):
    answers = [sts_credentials("key", "secret", "session", expires_in_s=REFRESH_AHEAD_S + 100)]
    sts = endpoints(lambda seen: answers[0])
    source = credential_source(web_identity_env(tmp_path, sts.url))
    held = source.get()
    answers[0] = (503, "text/plain", "down")
    clock = [time.time() + 150]                                # inside the refresh window, still valid
    monkeypatch.setattr(aws_credentials.time, "time", lambda: clock[0])
    assert source.get() == held and "using the current ones until they expire" in caplog.text
    clock[0] = held.expires + 1                                # expired, and STS still down
    with pytest.raises(CredentialsUnavailable, match="web identity credentials could not be fetched"):
        source.get()
    answers[0] = sts_credentials("key2", "secret2", "session2")
    assert source.get().access_key == "key2"                   # back by itself


def test_container_credentials_send_the_token_files_authorization(tmp_path, endpoints):
    ecs = endpoints(lambda seen: json_credentials("ck", "cs", "ct"))
    (tmp_path / "auth").write_text("Bearer pod-identity\n")
    env = {**NO_IMDS, "AWS_CONTAINER_CREDENTIALS_FULL_URI": ecs.url + "/v1/credentials",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(tmp_path / "auth")}
    creds = credential_source(env).get()
    assert (creds.access_key, creds.secret_key, creds.session_token) == ("ck", "cs", "ct")
    assert ecs.seen[0].path == "/v1/credentials" and ecs.seen[0].headers["authorization"] == "Bearer pod-identity"


def test_the_ec2_instance_role_through_imdsv2(endpoints):
    def imds(seen):
        if seen.method == "PUT" and seen.path == "/latest/api/token":
            return 200, "text/plain", "imds-token"
        if seen.headers.get("x-aws-ec2-metadata-token") != "imds-token":
            return 401, "text/plain", ""
        if seen.path == "/latest/meta-data/iam/security-credentials/":
            return 200, "text/plain", "node-role"
        if seen.path == "/latest/meta-data/iam/security-credentials/node-role":
            return json_credentials("ik", "is", "it")
        return 404, "text/plain", ""
    server = endpoints(imds)
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": server.url, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    assert credential_source(env).get().access_key == "ik"


def test_no_instance_metadata_says_how_to_set_credentials(endpoints):
    gone = endpoints(lambda seen: (200, "text/plain", ""))
    url = gone.url
    gone.close()                                               # nothing listens there now
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": url, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    with pytest.raises(NoCredentials, match="set AWS_ACCESS_KEY_ID.*AWS_EC2_METADATA_DISABLED=true"):
        credential_source(env).get()


def test_every_s3_call_is_signed_with_the_credentials_of_the_moment(tmp_path, endpoints, monkeypatch):
    """The S3 client asks the source before each call: a refreshed key and session token are in
    the next request's signature; expired credentials that cannot be renewed make the call
    Unreachable (the store is then down: 503, and its probe finds it back)."""
    keys = iter(["first", "second"])
    sts = endpoints(lambda seen: sts_credentials(next(keys, "third"), "secret", f"session-{len(sts.seen)}",
                                                 expires_in_s=REFRESH_AHEAD_S - 60))
    s3 = endpoints(lambda seen: (404, "application/xml", "<Error><Code>NoSuchKey</Code></Error>"))
    cfg = S3Config.from_env({**web_identity_env(tmp_path, sts.url), "AWS_ENDPOINT_URL_S3": s3.url})
    client = S3Client(cfg, "bkt", timeout_s=2)
    try:
        assert client.get("a/current") is None and client.get("b/current") is None
        auth = [seen.headers["authorization"] for seen in s3.seen]
        assert "Credential=first/" in auth[0] and "Credential=second/" in auth[1]
        assert [seen.headers["x-amz-security-token"] for seen in s3.seen] == ["session-1", "session-2"]
        sts.answer = lambda seen: (503, "text/plain", "down")
        assert client.get("c/current") is None           # the held ones are still valid: used on
        assert "Credential=second/" in s3.seen[-1].headers["authorization"]
        later = time.time() + REFRESH_AHEAD_S
        monkeypatch.setattr(aws_credentials.time, "time", lambda: later)
        with pytest.raises(Unreachable, match="web identity credentials could not be fetched"):
            client.get("c/current")
    finally:
        client.close()
