"""The S3 store's own logic on an in-memory S3 (fake_s3.py): signing, opening, conflicts, the
store going down and coming back, the file cache, old versions. The same store against a real
S3 server: tests/integration/test_store_contract.py and tests/e2e/test_s3_replicas.py."""
import hashlib
import time
from datetime import datetime, timezone

import httpx
import pytest
import torch

from fake_s3 import FakeS3
from lpt import new_adapter
from lpt.adapter import adapter_bytes
from lpt_server import s3, s3_store
from lpt_server.registry import Registry
from lpt_server.aws_credentials import Credentials, NoCredentials
from lpt_server.s3 import EMPTY_SHA256, S3Client, S3Config, sign
from lpt_server.s3_store import FileCache, S3Store, parse_url
from lpt_server.store_layout import NotAStore
from lpt_server.stores import StoreConflict, StoreUnavailable
from tiny import make_backbone

pytestmark = pytest.mark.unit
URL = "s3://b/adapters"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_signature_v4_matches_the_aws_documented_example():
    """AWS's 'GET Object' example of Signature Version 4 (the S3 API reference)."""
    creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    headers = sign("GET", "https://examplebucket.s3.amazonaws.com/test.txt", {"Range": "bytes=0-9"}, EMPTY_SHA256,
                   creds, "us-east-1", datetime(2013, 5, 24, tzinfo=timezone.utc))
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_the_standard_aws_variables_configure_the_client():
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "eu-west-3"}
    aws = S3Client(S3Config.from_env(env), "bkt")
    assert aws.base == "https://bkt.s3.eu-west-3.amazonaws.com"          # AWS itself: virtual-hosted
    cfg = S3Config.from_env({**env, "AWS_ENDPOINT_URL": "http://minio:9000/", "AWS_ENDPOINT_URL_S3": "http://s3:8333"})
    assert S3Client(cfg, "bkt").base == "http://s3:8333/bkt"            # the S3-specific one wins, path-style
    with pytest.raises(NoCredentials, match="AWS_SECRET_ACCESS_KEY"):
        S3Config.from_env({"AWS_ACCESS_KEY_ID": "k"})
    with pytest.raises(ValueError, match="http:// or https://"):
        S3Config.from_env({**env, "AWS_ENDPOINT_URL": "minio:9000"})


def test_store_urls():
    assert parse_url("s3://bucket") == ("bucket", "")
    assert parse_url("s3://bucket/") == ("bucket", "")
    assert parse_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    with pytest.raises(NotAStore, match="s3://BUCKET"):
        parse_url("s3:///prefix")


def test_a_server_that_ignores_conditional_writes_is_refused_at_start():
    fake = FakeS3()
    fake.ignore_conditions = True
    with pytest.raises(NotAStore, match="ignores If-None-Match on PUT"):
        S3Store(URL, client=fake.client())


def test_a_store_the_s3_server_refuses_at_start_says_what_to_check():
    fake = FakeS3()
    handle = fake.handle
    fake.handle = lambda request: httpx.Response(403, content=b"<Error><Code>InvalidAccessKeyId</Code><Message>"
                                                  b"The access key does not exist.</Message></Error>")
    with pytest.raises(NotAStore, match="answered 403 InvalidAccessKeyId: The access key does not exist.; check "
                                        r"the bucket name, the endpoint \(AWS_ENDPOINT_URL\) and the AWS_\* credentials"):
        S3Store(URL, client=fake.client())
    fake.handle = handle
    S3Store(URL, client=fake.client())                      # the server says yes: it opens


def test_a_prefix_lpt_serve_did_not_create_is_refused_and_left_alone():
    fake = FakeS3()
    fake.client().put("adapters/report.pdf", b"someone's file")
    before = dict(fake.objects)
    with pytest.raises(NotAStore, match="not empty and lpt-serve did not create it .*report.pdf"):
        S3Store(URL, client=fake.client())
    assert fake.objects == before
    S3Store("s3://b/elsewhere", client=fake.client()).put("a", b"x")     # another prefix: fine


def test_a_writer_that_keeps_losing_the_race_gets_a_conflict_and_changes_nothing():
    fake = FakeS3()
    store = S3Store(URL, client=fake.client())
    store.put("a", b"one")
    fake.always_412 = True
    with pytest.raises(StoreConflict, match="did not take effect: retry"):
        store.put("a", b"two")
    with pytest.raises(StoreConflict):
        store.delete("a")
    fake.always_412 = False
    assert store.current("a") == sha(b"one")


def test_a_busy_server_is_asked_again_for_reads_but_never_for_writes():
    # S3 answers 503 SlowDown under load: a read is tried up to three times (as the AWS SDKs do),
    # a write is not (a conditional write that did land would look like a lost race).
    fake = FakeS3()
    client = fake.client()
    client.put("k", b"v")
    fake.busy, fake.calls = 2, []
    assert client.get("k").body == b"v"
    assert fake.calls == [("GET", "503"), ("GET", "503"), ("GET", "k")]
    fake.busy, fake.calls = 2, []
    assert [x.key for x in client.list("k")] == ["k"]
    fake.busy, fake.calls = 3, []
    with pytest.raises(s3.Unreachable, match="503 from the S3 server: Please reduce your request rate"):
        client.get("k")
    assert len(fake.calls) == 3
    fake.busy, fake.calls = 1, []
    with pytest.raises(s3.Unreachable, match="503"):
        client.put("k", b"w")
    assert fake.calls == [("PUT", "503")] and client.get("k").body == b"v"


def test_a_store_that_goes_down_says_so_and_comes_back_by_itself():
    fake = FakeS3()
    store = S3Store(URL, client=fake.client())
    store.put("a", b"one")
    fake.down = True
    for call in (lambda: store.put("a", b"two"), lambda: store.delete("a"), store.names,
                 lambda: store.current("a")):
        with pytest.raises(StoreUnavailable, match="s3://b/adapters/ is unreachable .*fake-s3.test"):
            call()
    assert store.health().up is False and "unreachable" in store.health().error
    assert store.ping().up is False
    fake.down = False
    assert store.ping().up is True and store.health().error is None
    assert store.current("a") == sha(b"one")                 # the failed upload changed nothing


def test_a_listing_that_is_not_one_is_the_store_unavailable_not_a_crash():
    """A proxy's HTML page with 200, a listing cut off mid-way, a field that is not a number or a
    date: GET /v1/adapters answered 500 on each."""
    fake = FakeS3()
    store = S3Store(URL, client=fake.client())
    store.put("a", b"one")
    good = fake._list("adapters/", "").content
    for body in (b"<html><body>Sign in to continue</body></html>", b"<html><body>Sign in", good[: len(good) // 2],
                 good.replace(b"<Size>", b"<Size>x"), good.replace(b"<LastModified>", b"<LastModified>yesterday")):
        fake.listing_body = body
        for call in (store.names, store.versions):
            with pytest.raises(StoreUnavailable, match="not a ListObjectsV2 page"):
                call()
        assert store.health().up is False and "InvalidListing" in store.health().error
    fake.listing_body = None
    assert store.versions() == {"a": sha(b"one")} and store.health().up


class PageOnWrite(FakeS3):
    """A server that answers writes with a 200 page of 80 KiB (a proxy's, not S3's)."""

    page = False

    def handle(self, request):
        r = super().handle(request)
        if self.page and request.method in ("PUT", "DELETE") and r.status_code < 300:
            return httpx.Response(200, content=b"<p>" * (27 << 10), headers=r.headers)
        return r


def test_an_answer_too_large_to_be_s3s_is_a_clear_error_or_an_object_not_ours():
    """A write answered with a large page: the store is unavailable, saying why (it was a 500).
    An object too large for a pointer: a name this store did not write, the store up."""
    fake = PageOnWrite()
    store = S3Store(URL, client=fake.client())
    store.put("a", b"one")
    fake.page = True
    for call in (lambda: store.put("b", b"two"), lambda: store.delete("a")):
        with pytest.raises(StoreUnavailable, match="over 65536 bytes: not an S3 server's"):
            call()
        assert store.health().up is False and "InvalidAnswer" in store.health().error
    fake.page = False
    fake.objects[store._pointer_key("c")] = (b"x" * (70 << 10), '"big"', 0.0)
    assert store.current("c") is None and store.health().up       # answered: up; not a pointer: no version


def test_version_files_are_cached_within_the_bound():
    fake = FakeS3()
    store = S3Store(URL, client=fake.client(), cache_bytes=10)
    other = S3Store(URL, client=fake.client(), cache_bytes=10)   # another replica, cold cache
    v = store.put("a", b"12345678").version
    fake.calls.clear()
    assert other.read("a", v) == b"12345678" and other.read("a", v) == b"12345678"
    assert [c for c in fake.calls if c[0] == "GET"] == [("GET", f"adapters/a/{v}.safetensors")]
    fake.down = True
    assert other.read("a", v) == b"12345678"                 # versions never change: the cache serves
    w = sha(b"87654321")
    fake.objects[f"adapters/a/{w}.safetensors"] = (b"87654321", '"e"', time.time())
    with pytest.raises(StoreUnavailable):
        other.read("a", w)                                   # not cached: the store is asked, and fails
    fake.calls.clear()
    with pytest.raises(StoreUnavailable, match="is down .* adapter 'a' cannot be loaded"):
        other.read("a", w)                                   # known down now: not asked again
    assert fake.calls == []
    cache = FileCache(10)
    cache.put("x", b"123456")
    cache.put("y", b"1234")
    cache.get("x")                                           # x used last: y goes first
    cache.put("z", b"12")
    assert (cache.get("y"), cache.get("x"), cache.get("z")) == (None, b"123456", b"12") and cache.size == 8
    cache.put("big", b"x" * 11)                              # over the bound: never cached
    assert cache.get("big") is None


def test_a_listing_reads_only_the_pointers_that_changed_since_they_were_last_read():
    """versions() lists every pointer with its ETag and reads (GET) only the pointers written
    since this store last read them: one LIST, not a GET per adapter. A name another replica
    replaced is read again, one it deleted is gone; current() always reads the pointer."""
    fake = FakeS3()
    other = S3Store(URL, client=fake.client())                  # the replica that writes
    versions = {f"a{i}": other.put(f"a{i}", f"file {i}".encode()).version for i in range(20)}
    store = S3Store(URL, client=fake.client())                  # the replica that lists

    def listing() -> tuple[dict, list]:
        fake.calls.clear()
        return store.versions(), [key for method, key in fake.calls if method == "GET" and key]

    assert listing() == (versions, [f"adapters/a{i}/current" for i in sorted(range(20), key=str)])
    assert listing() == (versions, [])              # nothing changed: the LIST alone
    v_new = other.put("a3", b"replaced").version
    other.delete("a7")
    current, gets = listing()
    assert current == {**{n: v for n, v in versions.items() if n != "a7"}, "a3": v_new}
    assert gets == ["adapters/a3/current"]          # only the pointer written since
    assert "a7" not in store._read                  # what a deleted name's pointer was is forgotten
    fake.calls.clear()
    assert store.current("a1") == versions["a1"] and fake.calls == [("GET", "adapters/a1/current")]


def test_old_versions_go_once_no_pointer_names_them_and_foreign_objects_stay(monkeypatch):
    fake = FakeS3()
    store = S3Store(URL, client=fake.client())
    v1 = store.put("a", b"one").version
    fake.client().put("adapters/a/notes.txt", b"not ours")
    v2 = store.put("a", b"two").version
    assert f"adapters/a/{v1}.safetensors" in fake.objects      # younger than the write window: kept
    monkeypatch.setattr(s3_store, "WRITE_WINDOW_S", 0.0)
    v3 = store.put("a", b"three").version
    keys = set(fake.objects)
    assert f"adapters/a/{v3}.safetensors" in keys and "adapters/a/notes.txt" in keys
    assert not {f"adapters/a/{v}.safetensors" for v in (v1, v2)} & keys
    assert store.delete("a") and set(k for k in fake.objects if k.startswith("adapters/a/")) == {"adapters/a/notes.txt"}


def test_a_pointer_object_the_store_did_not_write_is_never_deleted_or_overwritten():
    """`<name>/current` holding something else (an operator's file): a delete is a 404 and a put a
    400 naming the object, and the object stays as it was (a delete removed it, a put replaced it)."""
    from lpt_server.errors import status_of

    fake = FakeS3()
    store = S3Store(URL, client=fake.client())
    fake.client().put("adapters/foreign/current", b"hello\n")
    assert store.delete("foreign") is False
    with pytest.raises(Exception, match="adapters/foreign/current holds an object lpt-serve did not write") as err:
        store.put("foreign", b"weights")
    assert status_of(err.value) == 400 and type(err.value).__name__ == "NameTaken"
    assert fake.objects["adapters/foreign/current"][0] == b"hello\n"
    assert [k for k in fake.objects if k.startswith("adapters/foreign/")] == ["adapters/foreign/current"]


@pytest.fixture(scope="module")
def bb():
    return make_backbone("bert", lm_head=False)


def adapter(bb, seed: int) -> bytes:
    torch.manual_seed(seed)
    return adapter_bytes(new_adapter(bb, task="t", labels=["a", "b"], layer=2, prompt_length=4).eval())


def test_the_registry_keeps_serving_what_it_knows_while_the_store_is_down(bb):
    fake = FakeS3()
    other = S3Store(URL, client=fake.client())                   # another replica
    registry = Registry(S3Store(URL, client=fake.client()), bb, recheck_s=0)
    v1 = other.put("a", adapter(bb, 1)).version
    assert registry.get("a").version == v1
    fake.down = True
    assert registry.get("a").version == v1                       # the failed recheck keeps the known version
    fake.calls.clear()
    for _ in range(3):
        assert registry.get("a").version == v1                   # known down: no request waits on it
    with pytest.raises(StoreUnavailable, match="'new' is not loaded here and the adapter store .* is down"):
        registry.get("new")                                      # nothing known: 503 at once, not after a timeout
    assert fake.calls == []
    for call in (lambda: registry.get("new"), lambda: registry.put("b", adapter(bb, 2)), registry.list,
                 lambda: registry.delete("a")):
        with pytest.raises(StoreUnavailable):
            call()
    fake.down = False
    v2 = other.put("a", adapter(bb, 3)).version
    assert registry.get("a").version == v1                       # not rechecked until the store is seen back
    registry.store.ping()
    assert registry.get("a").version == v2


def test_the_registry_lists_with_one_listing_and_reads_only_new_files(bb):
    """GET /v1/adapters on an S3 store: a listing, not a pointer read per adapter; a version
    another replica wrote is read (its file) and shown."""
    fake = FakeS3()
    other = S3Store(URL, client=fake.client())
    for i in range(5):
        other.put(f"t{i}", adapter(bb, i))
    registry = Registry(S3Store(URL, client=fake.client()), bb, recheck_s=0)
    assert [a["name"] for a in registry.list()] == [f"t{i}" for i in range(5)]
    fake.calls.clear()
    assert [a["name"] for a in registry.list()] == [f"t{i}" for i in range(5)]
    assert [c for c in fake.calls if c[0] == "GET" and c[1]] == []       # the LIST alone
    v = other.put("t2", adapter(bb, 9)).version
    fake.calls.clear()
    assert {a["name"]: a["version"] for a in registry.list()}["t2"] == v
    assert [c[1] for c in fake.calls if c[0] == "GET" and c[1]] == ["adapters/t2/current", f"adapters/t2/{v}.safetensors"]


def test_a_store_found_down_between_two_probes_is_pinged_within_a_second(monkeypatch):
    """The probe slept PROBE_UP_S (10 s) when it last saw the store up: one brief failure then
    refused every version not cached, at once, for up to 10 s."""
    import asyncio
    import types

    from lpt_server import runtime
    from lpt_server.store_calls import StoreCalls

    monkeypatch.setattr(runtime, "PROBE_UP_S", 1.0)          # timings scaled by 1/10
    monkeypatch.setattr(runtime, "PROBE_DOWN_S", 0.1)
    fake = FakeS3()
    store = S3Store(URL, client=fake.client(), cache_bytes=0)
    v = store.put("a", b"x" * 100).version

    async def main():
        me = types.SimpleNamespace(registry=types.SimpleNamespace(store=store), store_calls=StoreCalls())
        probe = asyncio.create_task(runtime.Runtime._probe_store(me))
        try:
            await asyncio.sleep(0.05)
            fake.busy = 3                                       # one read meets three 503s: marked down
            with pytest.raises(StoreUnavailable):
                await asyncio.to_thread(store.read, "a", v)
            t0 = time.monotonic()
            while True:                                         # the S3 server answers again from here
                try:
                    await asyncio.to_thread(store.read, "a", v)
                    return time.monotonic() - t0
                except StoreUnavailable:
                    await asyncio.sleep(0.02)
        finally:
            probe.cancel()
            me.store_calls.close()

    took = asyncio.run(main())
    assert took < 0.5, took
