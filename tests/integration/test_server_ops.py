"""Probes, /info, /metrics, /docs offline, the error body for unknown routes, the CLI, logs."""
import json
import logging
import os
import re

import httpx
import pytest

from live_server import serving
from tiny import make_backbone
from tiny_server import Held, adapter_file, admin, running, tiny_app, upload
from lpt import Engine, load_adapter
from lpt_server import Settings, cli, create_app, docs
from lpt_server.logging import JsonFormatter

pytestmark = pytest.mark.integration

METRICS = ["lpt_requests_total", "lpt_request_duration_seconds_bucket", "lpt_queue_size", "lpt_queue_wait_seconds",
           "lpt_batch_rows_bucket", "lpt_batch_tasks_bucket", "lpt_inference_duration_seconds",
           "lpt_adapters_resident", "lpt_adapters_registered", "lpt_adapter_load_duration_seconds",
           "lpt_layer_cache_hits_total", "lpt_layer_cache_misses_total", "lpt_layer_cache_bytes", "lpt_worker_alive",
           "lpt_train_jobs", "lpt_train_jobs_ended_total", "lpt_train_job_duration_seconds_bucket"]


def test_probes_answer_head_and_compressed_bodies_are_415_over_real_http(tmp_path, tiny_bb):
    """Load balancers and uptime checkers that probe with HEAD got 405 (read as down); a gzip body
    was read as it is and answered 'not valid JSON'."""
    import gzip

    with serving(tiny_app(tmp_path / "store", tiny_bb, admin_key="k" * 32)) as url:
        for path in ("/health", "/ready"):
            r = httpx.head(url + path)
            assert r.status_code == 200 and r.content == b"", (path, r.status_code)
        body = gzip.compress(json.dumps({"inputs": "x", "task": "t"}).encode())
        for method, path, kind in (("POST", "/v1/classify", "application/json"),
                                   ("PUT", "/v1/adapters/t", "application/octet-stream"),
                                   ("POST", "/v1/train", "multipart/form-data; boundary=b")):
            r = httpx.request(method, url + path, content=body, headers={
                "content-encoding": "gzip", "content-type": kind, "authorization": "Bearer " + "k" * 32})
            assert r.status_code == 415, (path, r.text)
            error = r.json()["error"]
            assert error["type"] == "unsupported_media_type" and "Content-Encoding: gzip" in error["message"], r.text


@pytest.mark.asyncio
async def test_probes_info_and_metrics(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, api_key="k") as (app, c):
        assert (await c.get("/health")).json() == {"status": "ok"}
        assert (await c.get("/ready")).json() == {"status": "ready"}
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        auth = {"Authorization": "Bearer k"}
        for _ in range(2):   # the second time hits the layer-k cache
            assert (await c.post("/v1/classify", json={"inputs": "great film", "task": "sent"},
                                 headers=auth)).status_code == 200
        info = (await c.get("/info")).json()
        assert info["model"]["id"] == "tiny-bert" and info["model"]["layers"] == 4
        assert info["settings"]["api_key"] == "set" and info["settings"]["admin_key"] == "set"
        assert "k" not in json.dumps(info["settings"]).replace('"', " ").split()    # no key values
        assert info["adapters"]["registered"] == 1 and info["ready"] is True
        r = await c.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        for name in METRICS:
            assert re.search(rf"^{name}", r.text, re.M), name
        assert 'lpt_requests_total{status="200",task="sent"} 2.0' in r.text
        assert "lpt_layer_cache_hits_total 1.0" in r.text
        held = float(re.search(r"^lpt_layer_cache_bytes (\S+)", r.text, re.M).group(1))
        enc = load_adapter(adapter_file(tiny_bb, "sent"), tiny_bb).encoder.encode("great film")
        assert held == len(enc.input_ids) * tiny_bb.hidden_size * 4 > 0     # the one text's states, float32


@pytest.mark.asyncio
async def test_request_duration_is_one_series_per_status_observed_once_per_request(tmp_path, tiny_bb):
    """Per-task label sets on the latency histogram grew /metrics by ~15 series per adapter."""
    async with running(tmp_path, tiny_bb) as (app, c):
        for name in ("a", "b", "c"):
            await upload(c, name, adapter_file(tiny_bb, name))
        assert (await c.post("/v1/classify", json={"inputs": "great film", "task": "a"})).status_code == 200
        assert (await c.post("/v1/classify", json={"inputs": ["fun", "bad"], "tasks": ["b", "c"]})).status_code == 200
        text = (await c.get("/metrics")).text
        assert 'lpt_request_duration_seconds_count{status="200"} 2.0' in text     # two requests
        assert not re.search(r"^lpt_request_duration_seconds\S*\{[^}]*task=", text, re.M)
        for name in ("a", "b", "c"):                                            # counted per task
            assert f'lpt_requests_total{{status="200",task="{name}"}} 1.0' in text


@pytest.mark.asyncio
async def test_a_deleted_adapters_request_series_go_with_it(tmp_path, tiny_bb):
    """Adapters come and go: a series per name ever served would grow /metrics without end.
    Deleted here or through another replica (seen by the next listing), its series go."""
    from lpt_server.store import Store

    async with running(tmp_path, tiny_bb, store_recheck_ms=0) as (app, c):
        for name in ("a", "b", "c"):
            await upload(c, name, adapter_file(tiny_bb, name))
            assert (await c.post("/v1/classify", json={"inputs": "fun", "task": name})).status_code == 200
        assert (await c.post("/v1/classify", json={"inputs": "", "task": "a"})).status_code == 422
        assert (await c.delete("/v1/adapters/a", headers=admin())).status_code == 204
        Store(tmp_path / "store").delete("b")                 # another replica deletes b
        assert [x["name"] for x in (await c.get("/v1/adapters")).json()["adapters"]] == ["c"]
        text = (await c.get("/metrics")).text
        series = set(re.findall(r'^lpt_requests_total\{status="(\d+)",task="(\w+)"\}', text, re.M))
        assert series == {("200", "c")}


@pytest.mark.asyncio
async def test_a_metrics_scrape_does_not_hold_up_the_event_loop(tmp_path, tiny_bb):
    """/metrics renders off the loop: /health answers while a render is still running."""
    async with running(tmp_path, tiny_bb) as (app, c):
        metrics = app.state.runtime.metrics
        metrics.render = held = Held(metrics.render)
        assert (await held.health_answers_meanwhile(c, c.get("/metrics"))).status_code == 200


@pytest.mark.asyncio
@pytest.mark.parametrize("path, owner, method", [("/v1/adapters", "registry", "list"),
                                                 ("/v1/train", "trainer", "list"),
                                                 ("/info", "registry", "problems")])
async def test_listings_run_off_the_event_loop(tmp_path, tiny_bb, path, owner, method):
    """A list of thousands of adapters, of kept training jobs or of unusable stored files (and
    the check of the response) is built in a worker thread: /health answers meanwhile."""
    async with running(tmp_path, tiny_bb) as (app, c):
        target = getattr(app.state.runtime, owner)
        held = Held(getattr(target, method))
        setattr(target, method, held)
        assert (await held.health_answers_meanwhile(c, c.get(path, headers=admin()))).status_code == 200


@pytest.mark.asyncio
async def test_an_int8_server_says_so_and_trains_in_float32(tmp_path):
    """`--dtype int8`: /info and the startup log name it; training jobs load the float32 model
    (int8 has no backward pass), whose adapters the int8 model serves."""
    bb = make_backbone("bert", lm_head=False).to_int8()
    async with running(tmp_path, bb, dtype="int8") as (app, c):
        assert (await upload(c, "sent", adapter_file(bb, "sent"))).status_code == 201
        r = await c.post("/v1/classify", json={"inputs": "great film", "task": "sent"})
        assert r.status_code == 200, r.text
        assert (await c.get("/info")).json()["model"]["dtype"] == "int8"
        assert app.state.runtime.train_runner.dtype == "float32"


@pytest.mark.asyncio
async def test_the_openapi_schema_is_built_before_the_first_request(tmp_path, tiny_bb):
    """FastAPI builds it on the first GET /openapi.json, on the event loop (~70 ms): at start instead."""
    async with running(tmp_path, tiny_bb) as (app, c):
        assert app.openapi_schema is not None
        assert (await c.get("/openapi.json")).json() == app.openapi_schema


@pytest.mark.asyncio
async def test_unknown_routes_and_methods_use_the_error_body(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.get("/v2/nothing")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
        r = await c.get("/v1/classify")
        assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


@pytest.mark.asyncio
async def test_ready_is_503_before_start_and_while_draining(tmp_path, tiny_bb):
    app = create_app(Settings(store=tmp_path, demo_adapters=False), engine_factory=lambda s: Engine(tiny_bb))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/ready")                                 # lifespan not run: no model
        assert r.status_code == 503 and "not loaded" in r.json()["error"]["message"]
    async with running(tmp_path, tiny_bb) as (app, c):
        app.state.runtime.draining = True
        assert (await c.get("/ready")).status_code == 503


@pytest.mark.asyncio
@pytest.mark.parametrize("swagger", [True, False])
async def test_docs_work_offline(tmp_path, tiny_bb, monkeypatch, swagger):
    if swagger and docs.swagger_assets() is None:
        pytest.skip("fastapi-offline is not installed")
    if not swagger:
        monkeypatch.setattr(docs, "swagger_assets", lambda: None)
    async with running(tmp_path, tiny_bb) as (app, c):
        page = (await c.get("/docs")).text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page loads something remote"
        for url in re.findall(r"""(?:src|href)=["']([^"']+)["']""", page):
            assert (await c.get(url)).status_code == 200, url
        assert "/openapi.json" in page
        spec = (await c.get("/openapi.json")).json()
        for path in ("/v1/classify", "/v1/tasks/{task}/classify", "/v1/adapters", "/v1/adapters/{name}",
                     "/health", "/ready", "/info", "/metrics"):
            assert path in spec["paths"], path
        mode = (await c.get("/info")).json()["docs"]
        assert mode.startswith("swagger-ui") if swagger else mode == "builtin route list"


def test_serve_flags_override_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LPT_PORT", "9001")
    monkeypatch.setenv("LPT_MAX_BATCH_ROWS", "7")
    monkeypatch.setenv("LPT_DEMO_ADAPTERS", "true")
    monkeypatch.setenv("LPT_URL", "http://elsewhere")      # the client's variable: ignored here
    s = cli.settings_from_args(["--port", "1234", "--no-demo-adapters", "--store", str(tmp_path),
                                "--log-format", "json", "--no-truncate", "--max-wait-ms", "2.5"])
    assert (s.port, s.max_batch_rows, s.demo_adapters, s.store, s.log_format, s.truncate, s.max_wait_ms) == \
        (1234, 7, False, str(tmp_path), "json", False, 2.5)
    # every setting has a flag
    flags = cli.serve_parser().format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in flags, name
    with pytest.raises(SystemExit):
        cli.settings_from_args(["--dtype", "int4"])


def test_default_engine_applies_threads_and_padding(tmp_path, tiny_bb, monkeypatch):
    """The real engine factory: the model from a local path, LPT_THREADS and LPT_MAX_PADDING
    applied, the kernel caches bounded."""
    import torch

    from lpt_server.runtime import KERNEL_CACHE_ENTRIES, KERNEL_CACHES, default_engine

    for name in KERNEL_CACHES:
        monkeypatch.setenv(name, "")                   # restored as it was after the test
        monkeypatch.delenv(name)

    tiny_bb.model.save_pretrained(tmp_path / "m")
    tiny_bb.tokenizer.save_pretrained(tmp_path / "m")
    before = torch.get_num_threads()
    torch.set_num_threads(3)                          # so that 1 below cannot be the ambient value
    try:
        engine = default_engine(Settings(model=str(tmp_path / "m"), threads=1, max_padding=2.5))
        assert torch.get_num_threads() == 1
        assert engine.max_padding == 2.5
        assert engine.backbone.fingerprint() == tiny_bb.fingerprint()
        assert all(os.environ[name] == str(KERNEL_CACHE_ENTRIES) for name in KERNEL_CACHES)
    finally:
        torch.set_num_threads(before)


def test_settings_are_frozen_and_empty_keys_mean_none(monkeypatch):
    monkeypatch.setenv("LPT_ADMIN_KEY", "")
    s = Settings()
    assert s.admin_key is None
    with pytest.raises(Exception):
        s.port = 1


def test_lpt_command_dispatch(capsys, monkeypatch):
    assert cli.main([]) == 2
    assert cli.main(["nope"]) == 2
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "lpt_client.cli":
            raise ImportError("No module named 'lpt_client.cli'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake_import(name))
    assert cli.main(["classify", "x"]) == 2
    assert "needs lpt_client.cli" in capsys.readouterr().err


def test_json_log_lines():
    rec = logging.LogRecord("lpt_server", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    rec.task = "sent"
    line = json.loads(JsonFormatter().format(rec))
    assert line["message"] == "hello world" and line["level"] == "info" and line["task"] == "sent"


@pytest.mark.asyncio
async def test_a_full_training_queue_still_names_a_wrong_content_type(tmp_path, tiny_bb):
    """A request that can never be a training job says so (400) whether or not the queue is
    full; a well-formed one meets the full queue (429) before its upload is read."""
    from lpt_server.train_jobs import TrainQueueFull

    async with running(tmp_path, tiny_bb) as (app, c):
        def full():
            raise TrainQueueFull("1 training jobs are waiting already (LPT_TRAIN_QUEUE=1)")
        app.state.runtime.trainer.check_room = full
        r = await c.post("/v1/train", json={"task": "t"}, headers=admin())
        assert r.status_code == 400 and "multipart/form-data" in r.text, r.text
        r = await c.post("/v1/train", files={"data": ("t.csv", b"text,label\na,b\n")}, data={"task": "t"},
                         headers=admin())
        assert r.status_code == 429 and r.headers["retry-after"], r.text


@pytest.mark.asyncio
async def test_a_training_job_whose_adapter_the_store_would_refuse_is_a_400(tmp_path, tiny_bb, monkeypatch):
    rows = "text,label\n" + "".join(f"w{i} {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    async with running(tmp_path, tiny_bb, max_adapter_bytes=100_000) as (app, c):
        r = await c.post("/v1/train", files={"data": ("t.csv", rows.encode())}, data={"task": "t"}, headers=admin())
        assert r.status_code == 400 and "over the server's limit" in r.text and "LPT_MAX_ADAPTER_BYTES" in r.text, r.text

        # the largest options the schema allows: refused from the config alone, nothing built (on
        # all-MiniLM-L6-v2 building it took 1.6 GB in the serving process before the refusal)
        import lpt.adapter

        def built(*args, **kwargs):
            raise AssertionError("an adapter was built to check a training form")
        monkeypatch.setattr(lpt.adapter, "LatePrompt", built)
        r = await c.post("/v1/train", files={"data": ("t.csv", rows.encode())},
                         data={"task": "t", "prompt_length": "256", "bottleneck": "4096"}, headers=admin())
        assert r.status_code == 400 and "over the server's limit" in r.text, r.text
        assert (await c.get("/v1/train", headers=admin())).json()["jobs"] == []


@pytest.mark.asyncio
async def test_every_classify_request_is_counted_whichever_stage_refuses_it(tmp_path, tiny_bb):
    """A refused key and a body refused before any task is known were never counted: the error
    ratio could not see them."""
    async with running(tmp_path, tiny_bb, api_key="k", max_inputs=2, max_body_bytes=2000) as (app, c):
        auth = {"Authorization": "Bearer k"}
        asks = [({"Authorization": "Bearer wrong"}, b'{"inputs": "x", "task": "sent"}', 401),
                (auth, b'{"inputs": ', 400),
                (auth, b'{"inputs": ["a", "b", "c"], "task": "sent"}', 413),
                (auth, b'{"inputs": "' + b"x" * 3000 + b'", "task": "sent"}', 413),
                (auth, b'{"inputs": "a", "task": "sent", "tasks": ["sent"]}', 422)]
        for headers, body, status in asks:
            r = await c.post("/v1/classify", content=body, headers={**headers, "Content-Type": "application/json"})
            assert r.status_code == status, (body[:40], r.text)
        r = await c.post("/v1/tasks/sent/classify", content=b"{", headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        text = (await c.get("/metrics")).text
    counted = {s: float(v) for s, v in re.findall(r'^lpt_request_duration_seconds_count\{status="(\d+)"\} (\S+)', text, re.M)}
    assert counted == {"401": 1.0, "400": 2.0, "413": 2.0, "422": 1.0}, counted
    assert 'lpt_requests_total{status="400",task="-"} 2.0' in text
    assert "lpt_requests_in_flight 0.0" in text
