"""POST /v1/classify and /v1/tasks/{task}/classify: answers, request validation, limits, auth."""
import pytest

from tiny_server import adapter_file, running, upload
from lpt import Engine, Row, load_adapter

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TEXTS = ["great film", "the plot was boring and the actors bad", "it is not very fun"]


def direct(bb, data, text, pair=None):
    """The engine's own answer for one row: what the server must return."""
    return Engine(bb, cache_entries=0).predict([Row(load_adapter(data, bb), text, pair)])[0]


async def test_multi_task_results_follow_request_order_and_equal_the_engine(tmp_path, tiny_bb):
    a = adapter_file(tiny_bb, "sent", seed=1)
    b = adapter_file(tiny_bb, "topic", labels=("x", "y", "z"), seed=2, layer=1, prompt_length=3)
    async with running(tmp_path, tiny_bb) as (app, c):
        assert (await upload(c, "sent", a)).status_code == 201
        assert (await upload(c, "topic", b)).status_code == 201
        r = await c.post("/v1/classify", json={"inputs": TEXTS, "tasks": ["topic", "sent"], "raw_scores": True})
        assert r.status_code == 200, r.text
        assert float(r.headers["x-queue-time-ms"]) >= 0 and float(r.headers["x-inference-time-ms"]) > 0
        results = r.json()["results"]
        assert len(results) == len(TEXTS)
        for text, per_input in zip(TEXTS, results):
            assert [x["task"] for x in per_input] == ["topic", "sent"]
            for item, data in zip(per_input, (b, a)):
                want = direct(tiny_bb, data, text)
                assert item["label"] == want.label
                assert item["score"] == pytest.approx(want.score, abs=1e-5)
                assert item["scores"] == pytest.approx(want.scores, abs=1e-5)
        # without raw_scores there is no scores key; one string is one input
        r = await c.post("/v1/classify", json={"inputs": "great film", "task": "sent"})
        assert r.status_code == 200
        (item,), = r.json()["results"]
        assert set(item) == {"task", "label", "score"}
        # the task in the URL
        r2 = await c.post("/v1/tasks/sent/classify", json={"inputs": ["great film"]})
        assert r2.json() == r.json()


async def test_text_pairs(tmp_path, tiny_bb):
    a = adapter_file(tiny_bb, "nli", labels=("entail", "neutral", "contra"))
    async with running(tmp_path, tiny_bb) as (app, c):
        await upload(c, "nli", a)
        r = await c.post("/v1/classify", json={"inputs": [["great film", "bad plot"], "fun"], "task": "nli",
                                               "raw_scores": True})
        assert r.status_code == 200, r.text
        got = r.json()["results"][0][0]
        want = direct(tiny_bb, a, "great film", "bad plot")
        assert got["scores"] == pytest.approx(want.scores, abs=1e-5)


@pytest.mark.parametrize("body,status,words", [
    ('{"inputs": ["great film"], "task": ', 400, "not valid JSON"),
    ("[1, 2]", 422, "JSON object"),
    ({"inputs": 1, "task": "sent"}, 422, "inputs"),
    ({"inputs": [1, "x"], "task": "sent"}, 422, "inputs[0]"),
    ({"inputs": [["only one"]], "task": "sent"}, 422, "inputs[0]"),
    ({"inputs": "x", "task": 3}, 422, "task"),
    ({"inputs": "x", "tasks": "sent"}, 422, "tasks"),
    ({"inputs": "x", "task": "sent", "raw_scores": "yes"}, 422, "raw_scores"),
    ({"inputs": "x"}, 422, "exactly one of"),
    ({"inputs": "x", "task": "sent", "tasks": ["sent"]}, 422, "exactly one of"),
    ({"inputs": "x", "tasks": []}, 422, "at least one task"),
    ({"inputs": "x", "tasks": ["sent", "sent"]}, 422, "more than once"),
    ({"input": "x", "task": "sent"}, 422, "unknown field"),
    ({"inputs": [], "task": "sent"}, 422, "empty list"),
    ({"inputs": "", "task": "sent"}, 422, "inputs[0] is empty"),
    ({"inputs": ["ok", "   "], "task": "sent"}, 422, "inputs[1] is empty"),
    # invisible characters only: tokenizers drop them, so the text would be classified as empty
    ({"inputs": ["ok", "\u200b\u200d\u2060"], "task": "sent"}, 422, "inputs[1] is empty"),
    ({"inputs": "\x00\x01\u0085\u00ad", "task": "sent"}, 422, "inputs[0] is empty: every text must have some visible"),
    ({"inputs": [["hello", "\ufeff\u180e"]], "task": "sent"}, 422, "inputs[0] is empty"),
    ({"inputs": "x", "task": "nope"}, 404, "unknown task 'nope'"),
    ({"inputs": "x", "tasks": ["sent", "nope"]}, 404, "unknown task 'nope'"),
    ({"inputs": "x", "task": "../sent"}, 404, "unknown task"),
])
async def test_bad_requests_say_what_to_fix(tmp_path, tiny_bb, body, status, words):
    async with running(tmp_path, tiny_bb) as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        if isinstance(body, str):
            r = await c.post("/v1/classify", content=body, headers={"content-type": "application/json"})
        else:
            r = await c.post("/v1/classify", json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) >= {"type", "message"} and words in err["message"], err


async def test_unknown_task_in_url_is_404(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb) as (app, c):
        r = await c.post("/v1/tasks/nope/classify", json={"inputs": "x"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


async def test_too_many_inputs_is_413(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, max_inputs=3) as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        ok = await c.post("/v1/classify", json={"inputs": ["a"] * 3, "task": "sent"})
        assert ok.status_code == 200
        r = await c.post("/v1/classify", json={"inputs": ["a"] * 4, "task": "sent"})
        assert r.status_code == 413 and "limit is 3" in r.json()["error"]["message"]
        # counted before any item is checked: a million bad items are one 413, not a million errors
        for route, body in (("/v1/classify", {"inputs": [1] * 1_000_000, "task": "sent"}),
                            ("/v1/tasks/sent/classify", {"inputs": [1] * 1_000_000})):
            r = await c.post(route, json=body)
            assert r.status_code == 413, r.text
            assert r.json()["error"]["message"] == ("1000000 inputs in one request, the limit is 3 (LPT_MAX_INPUTS): "
                                                    "split the request")


async def test_more_tasks_than_the_queue_holds_is_413_before_any_is_looked_up(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, queue_limit=4, max_body_bytes=8 * 2**20) as (app, c):
        r = await c.post("/v1/classify", json={"inputs": "x", "tasks": [1] * 1_000_000})
        assert r.status_code == 413, r.text
        assert r.json()["error"]["message"] == ("1000000 tasks in one request, more than the queue holds "
                                                "(4, LPT_QUEUE_LIMIT): split the request")


LONG = "the plot was boring and the actors bad " * 4      # 32 tokens


async def test_long_input_is_truncated_by_default(tmp_path, tiny_bb):
    data = adapter_file(tiny_bb, "sent")
    async with running(tmp_path, tiny_bb, max_input_tokens=8) as (app, c):
        await upload(c, "sent", data)
        r = await c.post("/v1/classify", json={"inputs": [LONG, "great film"], "task": "sent", "raw_scores": True})
        assert r.status_code == 200, r.text
        assert r.headers["x-truncated-inputs"] == "1"
        first8 = " ".join(LONG.split()[:8])
        assert r.json()["results"][0][0]["scores"] == pytest.approx(direct(tiny_bb, data, first8).scores, abs=1e-5)


async def test_long_input_is_413_without_truncation(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, max_input_tokens=8, truncate=False) as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        r = await c.post("/v1/classify", json={"inputs": ["great film", LONG], "task": "sent"})
        assert r.status_code == 413
        assert "inputs[1] has more than 8 tokens" in r.json()["error"]["message"]
        assert (await c.post("/v1/classify", json={"inputs": "great film", "task": "sent"})).status_code == 200


async def test_api_key_guards_inference(tmp_path, tiny_bb):
    async with running(tmp_path, tiny_bb, api_key="k1") as (app, c):
        await upload(c, "sent", adapter_file(tiny_bb, "sent"))
        body = {"inputs": "great film", "task": "sent"}
        r = await c.post("/v1/classify", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (await c.post("/v1/classify", json=body, headers={"Authorization": "Bearer no"})).status_code == 401
        assert (await c.post("/v1/classify", json=body, headers={"Authorization": "Bearer k1"})).status_code == 200
        assert (await c.get("/v1/adapters")).status_code == 401
        assert (await c.get("/v1/adapters", headers={"Authorization": "Bearer k1"})).status_code == 200
        assert (await c.get("/health")).status_code == 200     # probes stay open
