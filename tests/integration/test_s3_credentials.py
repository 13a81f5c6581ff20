"""An S3 store with no keys in its environment: a web identity (EKS's IRSA) assumed through STS
gives them, against a real S3 server (SeaweedFS). The STS endpoint is a stand-in on loopback
that answers with the S3 server's keys, as AWS STS answers with a role's, but with an empty
session token: SeaweedFS refuses a token it did not issue (test_aws_credentials.py checks that a
session token is signed into every call)."""
import pytest

from aws_endpoints import Endpoint, sts_credentials
from seaweed import ACCESS_KEY, SECRET_KEY
from lpt_server.store_layout import NotAStore
from lpt_server.stores import open_store

pytestmark = pytest.mark.integration


def test_a_store_on_a_web_identity_reads_and_writes(s3_server, tmp_path, monkeypatch):
    sts = Endpoint(lambda seen: sts_credentials(ACCESS_KEY, SECRET_KEY, ""))
    try:
        (tmp_path / "token").write_text("eyJ.projected.token")
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.env()["AWS_ENDPOINT_URL"])
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/lpt-serve")
        monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
        store = open_store(s3_server.url(), timeout_s=5)
        version = store.put("a", b"adapter bytes").version
        assert store.read("a", version) == b"adapter bytes" and store.names() == ["a"]
        assert sts.seen and sts.seen[0].form["WebIdentityToken"] == "eyJ.projected.token"

        sts.answer = lambda seen: (403, "text/xml", "<ErrorResponse><Error><Code>AccessDenied</Code>"
                                                    "<Message>no</Message></Error></ErrorResponse>")
        with pytest.raises(NotAStore, match=r"cannot use s3://.* as the adapter store: STS at .* refused "
                                            r"AssumeRoleWithWebIdentity for arn:aws:iam::123456789012:role/lpt-serve: "
                                            r"AccessDenied no"):
            open_store(s3_server.url(), timeout_s=5)
    finally:
        sts.close()
