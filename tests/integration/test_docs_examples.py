"""What a new user tries first works on a fresh server: the Swagger examples, the tasks the READMEs
name, and the server's bare address (the console, linking the API docs)."""
from __future__ import annotations

import json
import re

import pytest
from readme_blocks import CLIENT_README, README, blocks, demo_adapter_names
from tiny_server import adapter_file, running, upload

pytestmark = pytest.mark.integration

DEMO_LABELS = {"sentiment": ["negative", "positive"], "news-topic": ["world", "sports", "business", "sci/tech"]}


def _names(value: str) -> list[str]:
    """'"a"' or '["a", "b"]' (JSON or Python literal) -> names."""
    return re.findall(r"""["']([^"']+)["']""", value)


def tasks_used(code: str) -> set[str]:
    """Tasks a code block sends requests for (not the ones it trains or uploads)."""
    used = set()
    for line in code.splitlines():
        if "classify" in line:
            used.update(re.findall(r"--task[ =](\S+)", line))
    used.update(re.findall(r"/v1/tasks/([^/\s]+)/classify", code))
    for value in re.findall(r"""["']?\btasks?["']?\s*[:=]\s*(\[[^\]]*\]|"[^"]*")""", code):
        used.update(_names(value))
    return used


def tasks_uploaded(code: str) -> set[str]:
    """Tasks a code block uploads, or trains on the server (POST /v1/train, `client.train`)."""
    return set(re.findall(r"-X PUT \S*/v1/adapters/([\w.-]+)", code)
               + re.findall(r"adapters upload (\S+)", code)
               + re.findall(r"""upload_adapter\(\s*["']([^"']+)["']""", code)
               + re.findall(r"-F task=([\w.-]+)", code)
               + re.findall(r"""\btrain\(\s*["']([^"']+)["']""", code))


def test_the_demo_adapters_are_the_ones_named_here():
    assert demo_adapter_names() == set(DEMO_LABELS)


@pytest.mark.parametrize("doc", [README, CLIENT_README], ids=lambda p: p.name if p == README else "client/README.md")
def test_every_task_a_readme_asks_for_is_a_demo_adapter_or_uploaded_there(doc):
    code = "\n".join(b.code for b in blocks(doc))
    used, uploaded = tasks_used(code), tasks_uploaded(code)
    assert used & demo_adapter_names(), f"{doc}: the pattern above found no demo task; is it stale?"
    unknown = used - demo_adapter_names() - uploaded
    assert not unknown, f"{doc} classifies with {sorted(unknown)}: neither a demo adapter nor uploaded there"


def test_the_task_finder_sees_each_way_of_naming_a_task():
    code = """lpt classify --task a --task=b "text"
curl localhost:8080/v1/tasks/c/classify -d '{"inputs": "x", "task": "d", "tasks": ["e", "f"]}'
client.classify(texts, tasks=["g", "h"]); client.classify(texts, task="i")
lpt train --task not-a-request --data x.csv"""
    assert tasks_used(code) == set("abcdefghi")


def test_the_upload_finder_sees_uploads_and_training():
    code = """curl -X PUT localhost:8080/v1/adapters/a --data-binary @a.safetensors
lpt adapters upload b b.safetensors; client.upload_adapter("c", "c.safetensors")
curl localhost:8080/v1/train -F task=d -F data=@train.csv; job = client.train("e", "train.csv")"""
    assert tasks_uploaded(code) == set("abcde")


def openapi_examples(app) -> list[tuple[str, dict]]:
    """(path with its parameters filled from their examples, example body) for every JSON request
    example in the OpenAPI schema: what Swagger's "Try it out" sends as it stands."""
    out = []
    for path, methods in app.openapi()["paths"].items():
        for op in methods.values():
            schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            filled = path
            for p in op.get("parameters", []) if schema.get("examples") else []:
                if p["in"] == "path":
                    assert p.get("examples"), f"{path}: path parameter {p['name']!r} has no example"
                    filled = filled.replace("{%s}" % p["name"], next(iter(p["examples"].values()))["value"])
            out += [(filled, example) for example in schema.get("examples", [])]
    return out


@pytest.mark.asyncio
async def test_every_openapi_example_answers_200_on_the_demo_adapters(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, c):
        for name, labels in DEMO_LABELS.items():
            await upload(c, name, adapter_file(tiny_bb, name, labels))
        examples = openapi_examples(app)
        assert {path for path, _ in examples} == {"/v1/classify", "/v1/tasks/sentiment/classify"}
        for path, example in examples:
            names = [example["task"]] if "task" in example else example.get("tasks", [])
            names += re.findall(r"/v1/tasks/([^/]+)/", path)
            assert set(names) <= demo_adapter_names(), f"{path} example names {names}: not demo adapters"
            r = await c.post(path, json=example)
            assert r.status_code == 200, (path, json.dumps(example), r.text)


@pytest.mark.asyncio
async def test_the_bare_address_is_the_console_which_links_the_api_docs(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert re.search(r"""<a href="docs">API docs</a>""", r.text), "the console does not link the API docs"
        docs = await c.get("/docs")       # the relative link, from the page at /
        assert docs.status_code == 200 and "openapi.json" in docs.text
        assert "/" not in app.openapi()["paths"]          # a page, not an API route


@pytest.mark.parametrize("doc", [README, CLIENT_README], ids=lambda p: p.name if p == README else "client/README.md")
def test_one_admin_key_and_no_store_inside_the_repository(doc):
    code = "\n".join(b.code for b in blocks(doc))
    found = re.findall(r"""LPT_ADMIN_KEY=(\w+)|admin_key=["'](\w+)["']|Bearer (\w+)""", doc.read_text(encoding="utf-8"))
    keys = {k for groups in found for k in groups if k}
    assert len(keys) == 1, f"{doc}: admin keys {sorted(keys)}; following it in order must not give a 403"
    for store in re.findall(r"(?:--store[ =]|LPT_STORE=)(\S+)", code):
        assert store.startswith(("/", "~", "$")), f"{doc}: store {store!r} is relative: a folder in the checkout"
