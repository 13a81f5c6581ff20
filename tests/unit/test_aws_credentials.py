"""Where an s3:// store's credentials come from: the AWS SDKs' chain (static keys, web identity,
a profile, the container endpoint, EC2 instance metadata), against real HTTP endpoints on
loopback that answer as the documented APIs do; renewed ahead of expiry off the caller's path,
kept through a failed renewal while still valid, and signed into every S3 call."""
import threading
import time

import pytest

from aws_endpoints import Endpoint, json_credentials, sts_credentials, sts_refusal
from lpt_server import aws_credentials
from lpt_server.aws_credentials import (REFRESH_AHEAD_S, RETRY_AFTER_S, Credentials, CredentialSource,
                                        CredentialsUnavailable, NoCredentials, credential_source)
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


def eventually(check, timeout: float = 5.0):
    """Poll `check` until it is true (a renewal runs on its own thread)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.01)


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


def later(monkeypatch, seconds: float) -> None:
    """The credentials' clock `seconds` ahead of the real one."""
    t = time.time() + seconds
    monkeypatch.setattr(aws_credentials, "_clock", lambda: t)


def test_web_identity_assumes_the_role_with_the_token_read_at_each_refresh(tmp_path, endpoints, monkeypatch):
    """An unsigned AssumeRoleWithWebIdentity with the file's token; credentials are renewed
    REFRESH_AHEAD_S before they expire, with the token as the file holds it then."""
    sts = endpoints(lambda seen: sts_credentials(f"key-{len(sts.seen)}", "secret", "session",
                                                 expires_in_s=3600))
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
    later(monkeypatch, 3600 - REFRESH_AHEAD_S - 10)
    assert source.get() is got and len(sts.seen) == 1         # not yet due
    later(monkeypatch, 3600 - REFRESH_AHEAD_S + 10)
    assert source.get() is got                                # due: renewed beside the call
    eventually(lambda: source.get().access_key == "key-2")
    assert sts.seen[1].form["WebIdentityToken"] == "token-2"


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


def test_a_failed_renewal_keeps_valid_credentials_then_the_store_is_unavailable(tmp_path, endpoints, monkeypatch,
                                                                                caplog):
    answers = [sts_credentials("key", "secret", "session", expires_in_s=REFRESH_AHEAD_S + 100)]
    sts = endpoints(lambda seen: answers[0])
    source = credential_source(web_identity_env(tmp_path, sts.url))
    held = source.get()
    answers[0] = (503, "text/plain", "down")
    clock = [time.time() + 250]                                # inside the renewal window, still valid
    monkeypatch.setattr(aws_credentials, "_clock", lambda: clock[0])
    assert source.get() == held
    eventually(lambda: "the current ones serve until they expire" in caplog.text)
    for _ in range(5):
        assert source.get() == held                            # no new try within RETRY_AFTER_S
    assert len(sts.seen) == 2
    clock[0] = held.expires + 1                                # expired, and STS still down
    with pytest.raises(CredentialsUnavailable, match="web identity credentials could not be fetched: .*503"):
        source.get()
    answers[0] = sts_credentials("key2", "secret2", "session2")
    with pytest.raises(CredentialsUnavailable):                # the failure is answered for RETRY_AFTER_S
        source.get()
    clock[0] += RETRY_AFTER_S
    assert source.get().access_key == "key2"                   # then back by itself


def test_a_slow_source_never_delays_a_call_while_the_held_ones_are_valid(tmp_path, endpoints, monkeypatch):
    release = threading.Event()

    def answer(seen):
        if len(sts.seen) > 1:
            release.wait(5)                                    # a renewal that hangs
        return sts_credentials(f"key-{len(sts.seen)}", "secret", "session", expires_in_s=3600)
    sts = endpoints(answer)
    source = credential_source(web_identity_env(tmp_path, sts.url))
    source.get()
    later(monkeypatch, 3600 - REFRESH_AHEAD_S + 10)            # due for renewal
    t0 = time.monotonic()
    for _ in range(20):
        assert source.get().access_key == "key-1"
    assert time.monotonic() - t0 < 0.5
    eventually(lambda: len(sts.seen) == 2)                     # one renewal, hanging beside the calls
    for _ in range(20):
        assert source.get().access_key == "key-1"
    assert len(sts.seen) == 2
    release.set()
    eventually(lambda: source.get().access_key == "key-2")


def test_without_valid_credentials_one_failed_fetch_answers_every_waiter():
    """Eight store threads that need credentials while the source hangs for 0.5 s and fails: one
    fetch, and every thread has its answer when that one fails (not one wait per thread)."""
    calls = []

    def fetch():
        calls.append(1)
        time.sleep(0.5)
        raise OSError("connection timed out")
    source = CredentialSource("web identity", fetch)
    errors, t0 = [], time.monotonic()

    def need():
        try:
            source.get()
        except Exception as e:                                 # noqa: BLE001 - collected and checked below
            errors.append((type(e), time.monotonic() - t0))
    threads = [threading.Thread(target=need) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and [e for e, _ in errors] == [CredentialsUnavailable] * 8
    assert max(took for _, took in errors) < 1.5


def test_short_lived_credentials_are_renewed_halfway_not_at_every_call(endpoints, tmp_path, monkeypatch):
    sts = endpoints(lambda seen: sts_credentials("key", "secret", "session", expires_in_s=100))
    source = credential_source(web_identity_env(tmp_path, sts.url))
    for _ in range(20):
        source.get()
        time.sleep(0.01)
    later(monkeypatch, 40)
    source.get()
    time.sleep(0.2)                                            # a renewal started by any of them has been asked
    assert len(sts.seen) == 1
    later(monkeypatch, 60)                                     # past half their life
    source.get()
    eventually(lambda: len(sts.seen) == 2)


@pytest.mark.parametrize("answer, message", [
    (sts_credentials("k", "s", "t").__class__((200, "text/xml", "<AssumeRoleWithWebIdentityResponse><Credentials>"
                                                "<AccessKeyId>k</AccessKeyId><SecretAccessKey>s</SecretAccessKey>"
                                                "</Credentials></AssumeRoleWithWebIdentityResponse>")),
     "Expiration is None"),
    ((200, "text/xml", "<html>a proxy's page</html>"), "without credentials"),
    ((200, "text/xml", "not xml at all <"), "ParseError"),
])
def test_a_strange_answer_is_a_clear_error_never_a_crash(tmp_path, endpoints, answer, message):
    sts = endpoints(lambda seen: answer)
    source = credential_source(web_identity_env(tmp_path, sts.url))
    with pytest.raises(CredentialsUnavailable, match=message):
        source.get()


@pytest.mark.parametrize("body, message", [("[]", "answered list, not an object"),
                                           ('{"AccessKeyId": "k", "SecretAccessKey": "s", "Expiration": 17}',
                                            "Expiration is 17, not a time"),
                                           ('{"AccessKeyId": "k"}', "no access key id and secret")])
def test_a_strange_container_answer_is_a_clear_error(endpoints, body, message):
    ecs = endpoints(lambda seen: (200, "application/json", body))
    source = credential_source({**NO_IMDS, "AWS_CONTAINER_CREDENTIALS_FULL_URI": ecs.url + "/creds"})
    with pytest.raises(CredentialsUnavailable, match=message):
        source.get()


def test_profiles_read_like_the_sdks(tmp_path):
    """No interpolation ('%' is a legal secret character); a named profile that cannot be read is
    an error, not a silent fall through to the next source (an instance role, say)."""
    profile = tmp_path / "credentials"
    profile.write_text("[default]\naws_access_key_id = k\naws_secret_access_key = 50%off%s\n")
    assert credential_source({"AWS_SHARED_CREDENTIALS_FILE": str(profile)}).get().secret_key == "50%off%s"
    with pytest.raises(NoCredentials, match="AWS_PROFILE 'prod': the shared credentials file cannot be read"):
        credential_source({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_PROFILE": "prod"})
    profile.write_text("[prod]\na = 1\n[prod]\nb = 2\n")
    with pytest.raises(NoCredentials, match="AWS_PROFILE 'prod': .* cannot be parsed"):
        credential_source({"AWS_SHARED_CREDENTIALS_FILE": str(profile), "AWS_PROFILE": "prod"})


def test_container_credentials_send_the_token_files_authorization(tmp_path, endpoints):
    """As the SDKs: the ECS relative URI wins over a full one; a full one in plain http only to
    loopback or the ECS / EKS Pod Identity addresses (the token must not go out in clear)."""
    with pytest.raises(NoCredentials, match="not https, and not the ECS or EKS credentials address"):
        credential_source({**NO_IMDS, "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://example.com/creds"}).get()
    relative = credential_source({**NO_IMDS, "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/creds",
                                  "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"})
    with pytest.raises((NoCredentials, CredentialsUnavailable), match="169.254.170.2"):   # not ECS: no answer
        relative.get()
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


def test_an_imds_token_request_that_times_out_falls_back_to_imdsv1(endpoints, monkeypatch):
    """A container past the token's one-hop limit never gets the PUT's answer: IMDSv1, as the SDKs."""
    def imds(seen):
        if seen.method == "PUT":
            time.sleep(3)                                      # past the 2 s the lookup waits
            return 200, "text/plain", "late"
        if seen.path == "/latest/meta-data/iam/security-credentials/":
            return 200, "text/plain", "node-role"
        return json_credentials("v1k", "v1s", "v1t")
    server = endpoints(imds)
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": server.url, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    assert credential_source(env).get().access_key == "v1k"
    assert "x-aws-ec2-metadata-token" not in server.seen[-1].headers


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
                                                 expires_in_s=3600))
    s3 = endpoints(lambda seen: (404, "application/xml", "<Error><Code>NoSuchKey</Code></Error>"))
    cfg = S3Config.from_env({**web_identity_env(tmp_path, sts.url), "AWS_ENDPOINT_URL_S3": s3.url})
    client = S3Client(cfg, "bkt", timeout_s=2)
    try:
        assert client.get("a/current") is None
        later(monkeypatch, 3600 - REFRESH_AHEAD_S + 10)
        eventually(lambda: cfg.credentials.get().access_key == "second")      # renewed beside the call
        assert client.get("b/current") is None
        auth = [seen.headers["authorization"] for seen in s3.seen]
        assert "Credential=first/" in auth[0] and "Credential=second/" in auth[1]
        assert [seen.headers["x-amz-security-token"] for seen in s3.seen] == ["session-1", "session-2"]
        sts.answer = lambda seen: (503, "text/plain", "down")
        assert client.get("c/current") is None           # the held ones are still valid: used on
        assert "Credential=second/" in s3.seen[-1].headers["authorization"]
        later(monkeypatch, 7200 + RETRY_AFTER_S)                             # the second ones expired too
        with pytest.raises(Unreachable, match="web identity credentials could not be fetched"):
            client.get("c/current")
    finally:
        client.close()


def test_a_calls_time_starts_after_its_credentials(endpoints):
    """The first call waits for its credentials (0.8 s here) with their own timeout; the S3 call
    still gets its whole 1 s after that (0.5 s for the answer): the fetch did not eat its time."""
    def fetch():
        time.sleep(0.8)
        return Credentials("k", "s")

    def slow(seen):
        time.sleep(0.5)
        return 404, "application/xml", "<Error><Code>NoSuchKey</Code></Error>"
    s3 = endpoints(slow)
    client = S3Client(S3Config(s3.url, "us-east-1", CredentialSource("slow", fetch)), "bkt", timeout_s=1.0)
    try:
        assert client.get("a/current") is None
    finally:
        client.close()


class Fetches:
    """A fetch function whose answers the test sets: Credentials, or an exception to raise."""

    def __init__(self, answer):
        self.answer, self.calls = answer, 0

    def __call__(self):
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_failure_is_answered_afresh_to_each_caller():
    """The failure repeated within RETRY_AFTER_S is a new exception each time: one object raised
    again would gather every caller's frames (and the upload bodies they hold)."""
    source = CredentialSource("test", Fetches(OSError("refused")))
    errors = []
    for _ in range(3):
        with pytest.raises(CredentialsUnavailable) as e:
            source.get()
        errors.append(e.value)
    assert source._fetch.calls == 1 and len({id(e) for e in errors}) == 3
    assert all(len(list(_frames(e))) <= 2 for e in errors)


def _frames(e):
    tb = e.__traceback__
    while tb is not None:
        yield tb
        tb = tb.tb_next


def test_credentials_that_come_expired_are_a_failure_not_a_signature(monkeypatch):
    fetch = Fetches(Credentials("k", "s", "t", expires=time.time() - 60))
    source = CredentialSource("test", fetch)
    for _ in range(3):
        with pytest.raises(CredentialsUnavailable, match="came expired .* check the clock"):
            source.get()
    assert fetch.calls == 1


def test_a_failed_renewal_does_not_hold_back_the_fetch_after_expiry(monkeypatch):
    """Renewal failed 3 s before the held ones expired; the source is back: the first call after
    expiry fetches at once (the renewal's backoff is for renewals only)."""
    now = time.time()
    fetch = Fetches(Credentials("k1", "s", "t", expires=now + 1000))
    source = CredentialSource("test", fetch)
    source.get()
    later(monkeypatch, 997)
    fetch.answer = OSError("down")
    source.get()
    eventually(lambda: fetch.calls == 2 and not source._renewing)
    fetch.answer = Credentials("k2", "s", "t", expires=now + 5000)
    later(monkeypatch, 1001)
    assert source.get().access_key == "k2"


def test_no_thread_for_a_renewal_leaves_the_held_ones_serving(monkeypatch):
    fetch = Fetches(Credentials("k1", "s", "t", expires=time.time() + 1000))
    source = CredentialSource("test", fetch)
    source.get()
    later(monkeypatch, 900)

    def no_thread(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    assert source.get().access_key == "k1" and not source._renewing
    monkeypatch.undo()
    later(monkeypatch, 900 + RETRY_AFTER_S)
    fetch.answer = Credentials("k2", "s", "t", expires=time.time() + 5000)
    source.get()
    eventually(lambda: source.get().access_key == "k2")
