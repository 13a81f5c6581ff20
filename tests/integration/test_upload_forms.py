"""PUT /v1/adapters/{name} takes the file as the body or as the one part of a multipart form:
`curl --data-binary @f` and `curl -F file=@f` (run for real), httpx `content=` and `files=`."""
import hashlib
import shutil
import subprocess

import httpx
import pytest
from live_server import serving
from tiny_server import ADMIN, adapter_file, admin, running, tiny_app

pytestmark = pytest.mark.integration


def stored(store) -> list[str]:
    return sorted(p.name for p in store.rglob("*") if p.is_file())


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["file", "adapter"])
async def test_httpx_files_upload_is_served(tmp_path, tiny_bb, field):
    data = adapter_file(tiny_bb, "my-task", ["no", "yes"])
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.put("/v1/adapters/my-task", files={field: ("my-task.safetensors", data)}, headers=admin())
        assert r.status_code == 201, r.text
        assert r.json()["version"] == hashlib.sha256(data).hexdigest()      # the file, not the form around it
        r = await c.put("/v1/adapters/my-task", content=data, headers=admin())       # raw body: replaced
        assert r.status_code == 200 and r.json()["version"] == hashlib.sha256(data).hexdigest()
        r = await c.post("/v1/classify", json={"inputs": "some text", "task": "my-task"})
        assert r.status_code == 200 and r.json()["results"][0][0]["label"] in ("no", "yes")


@pytest.mark.asyncio
async def test_bad_forms_are_refused_and_change_nothing(tmp_path, tiny_bb):
    data = adapter_file(tiny_bb, "my-task")
    async with running(tmp_path, tiny_bb, max_adapter_bytes=len(data)) as (app, c):
        before = stored(tmp_path / "store")
        cases = [
            ({"files": {"file": ("a.safetensors", data)}, "data": {"name": "my-task"}}, 400, "more than one part"),
            ({"files": {"file": ("big.safetensors", data + b"\0")}}, 413, "LPT_MAX_ADAPTER_BYTES"),
            ({"content": b"--B\r\n\r\n" + data, "headers": {"content-type": "multipart/form-data; boundary=B"}},
             400, "ends before its closing boundary"),
            ({"content": data, "headers": {"content-type": "multipart/form-data"}}, 400, "boundary parameter"),
            ({"files": {"file": ("x.txt", b"not an adapter")}}, 400, "not a safetensors file"),
        ]
        for kwargs, status, words in cases:
            headers = {**admin(), **kwargs.pop("headers", {})}
            r = await c.put("/v1/adapters/my-task", headers=headers, **kwargs)
            assert r.status_code == status and words in r.json()["error"]["message"], (words, r.text)
            assert stored(tmp_path / "store") == before
        r = await c.put("/v1/adapters/my-task", files={"file": ("f", data)}, headers=admin())
        assert r.status_code == 201, r.text                # exactly at the limit: the form's wrapping is free


def test_the_openapi_schema_documents_both_ways(tmp_path, tiny_bb):
    op = tiny_app(tmp_path / "store", tiny_bb).openapi()["paths"]["/v1/adapters/{name}"]["put"]
    content = op["requestBody"]["content"]
    assert content["application/octet-stream"]["schema"]["format"] == "binary"
    assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert "curl -F file=@" in op["description"] and "--data-binary" in op["description"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_form_and_raw_uploads(tmp_path, tiny_bb):
    data = adapter_file(tiny_bb, "my-task", ["no", "yes"])
    (tmp_path / "my-task.safetensors").write_bytes(data)
    with serving(tiny_app(tmp_path / "store", tiny_bb, admin_key=ADMIN)) as url:
        def curl(*args: str) -> tuple[int, str]:
            out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "PUT",
                                  "-H", f"Authorization: Bearer {ADMIN}", *args],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True).stdout
            body, _, status = out.rpartition("\n")
            return int(status), body
        status, body = curl(f"{url}/v1/adapters/my-task", "-F", "file=@my-task.safetensors")
        assert status == 201, body
        status, body = curl(f"{url}/v1/adapters/my-task", "--data-binary", "@my-task.safetensors")
        assert status == 200, body
        status, body = curl(f"{url}/v1/adapters/my-task", "-F", "file=@my-task.safetensors",
                            "-H", "Transfer-Encoding: chunked")             # no Content-Length
        assert status == 200, body
        assert hashlib.sha256(data).hexdigest() in body
        assert httpx.get(f"{url}/v1/adapters/my-task").json()["labels"] == ["no", "yes"]
