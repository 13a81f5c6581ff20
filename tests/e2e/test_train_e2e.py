"""Training through the API against a real `lpt serve` process (a tiny random BERT saved to disk,
so that the training process loads the very model the server serves): a job trains, is stored
and answers classify at once; bad data and an over-size upload are refused before any job; a full
queue is a 429; cancelling works queued and running; classify answers while a job trains. Through
the command line (`lpt train --remote`), the sync client and the async client."""
from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from serve_process import ADMIN, Server
from tiny import make_backbone, save_backbone

from lpt import new_adapter
from lpt.adapter import adapter_bytes
from lpt_client import AsyncClient, BadRequest, Client, Conflict, NotFound, Overloaded

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_TRAIN_BYTES = 40_000
KEY = {"Authorization": f"Bearer {ADMIN}"}


def write_rows(path, n: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment"])
        for i in range(n):
            w.writerow([f"{'great fun good' if i % 2 else 'bad boring terrible'} w{i % 80}", "pos" if i % 2 else "neg"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_e2e")
    bb = make_backbone("bert", lm_head=False)
    save_backbone(bb, root / "model")
    write_rows(root / "train.csv", 40)
    write_rows(root / "long.csv", 400)
    s = Server(root / "store", root / "server.log", "--model", str(root / "model"), "--train-queue", "1",
               "--max-train-bytes", str(MAX_TRAIN_BYTES))
    try:
        s.wait_ready()
        served = adapter_bytes(new_adapter(bb, task="served", labels=["neg", "pos"], layer=2).eval())
        httpx.put(s.url + "/v1/adapters/served", content=served, headers=KEY).raise_for_status()
        yield s, root
    finally:
        s.stop()


def children_nice(pid: int, training: bool = True) -> list[int]:
    """The niceness of each child process of `pid` (Linux /proc) that is a training job (or,
    training=False, each that is not: the model processes)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        for child in open(f"/proc/{pid}/task/{task}/children").read().split():
            is_job = b"lpt.jobrun" in open(f"/proc/{child}/cmdline", "rb").read()
            if is_job == training:
                out.append(int(open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[16]))
    return out


def lpt_train_remote(server, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lpt")
    cmd = [exe] if exe else [sys.executable, "-m", "lpt_server"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPT_")}
    return subprocess.run([*cmd, "train", "--remote", server.url, "--admin-key", ADMIN, *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_job_trains_and_its_adapter_is_served_at_once(server):
    server, root = server
    done = lpt_train_remote(server, "--task", "reviews", "--data", str(root / "train.csv"), "--text-column",
                            "review", "--label-column", "sentiment", "--epochs", "2", "--json", "--poll", "0.3")
    assert done.returncode == 0, done.stderr + server.tail()
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded" and job["error"] is None
    assert job["progress"]["step"] == job["progress"]["steps"] > 0 and job["progress"]["epochs"] == 2
    assert job["history"] and job["history"][-1]["dev_accuracy"] is not None
    assert job["metrics"]["dev"]["examples"] > 0 and job["metrics"]["test"] is None
    assert "training job" in done.stderr and "running" in done.stderr          # the progress it showed
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'lpt_train_jobs_ended_total{state="succeeded"} 1.0' in metrics
    assert 'lpt_train_job_duration_seconds_count{state="succeeded"} 1.0' in metrics
    assert 'lpt_train_jobs{state="running"} 0.0' in metrics

    with Client(server.url, admin_key=ADMIN) as client:
        assert client.get_adapter("reviews").version == job["adapter"]["version"]   # stored, as an upload is
        [[answer]] = client.classify("great fun", task="reviews")
        assert answer.task == "reviews" and answer.label in ("neg", "pos")
        again = client.get_training(job["id"])
        assert again.state == "succeeded" and again.adapter.version == job["adapter"]["version"]
        assert job["id"] in [j.id for j in client.list_trainings()]
        with pytest.raises(Conflict):                                      # it has ended
            client.cancel_training(job["id"])
        with pytest.raises(NotFound):
            client.get_training("no-such-job")


def test_bad_data_and_oversize_uploads_are_refused_before_any_job(server):
    server, root = server
    with Client(server.url, admin_key=ADMIN, max_retries=0) as client:
        before = [j.id for j in client.list_trainings()]
        with pytest.raises(BadRequest) as refused:
            client.train("bad", root / "train.csv", text_column="review", label_column="label")
        assert refused.value.status_code == 400
        assert refused.value.message == ("train.csv has no column 'label' (available: 'review', 'sentiment'); "
                                         "pass --label-column with the right name")
        big = ("big.csv", b"text,label\n" + b"some words,a\n" * (MAX_TRAIN_BYTES // 10))
        r = httpx.post(server.url + "/v1/train", headers=KEY, data={"task": "big"}, files={"data": big})
        assert r.status_code == 413 and "LPT_MAX_TRAIN_BYTES" in r.json()["error"]["message"]
        assert [j.id for j in client.list_trainings()] == before                  # no job for either
    done = lpt_train_remote(server, "--task", "bad", "--data", str(root / "train.csv"), "--epochs", "0")
    assert done.returncode == 3 and "--epochs must be at least 1" in done.stderr, done.stderr


def test_a_full_queue_cancelling_and_serving_while_a_job_trains(server):
    server, root = server

    async def scenario():
        async with AsyncClient(server.url, admin_key=ADMIN, max_retries=0) as client:
            slow = await client.train("slow", root / "long.csv", text_column="review", label_column="sentiment",
                                      epochs=5000)
            deadline = time.monotonic() + 240
            while (job := await client.get_training(slow.id)).progress.step < 20:    # it trains
                assert job.state in ("queued", "running") and time.monotonic() < deadline, job
                await asyncio.sleep(0.2)
            waiting = await client.train("waiting", root / "train.csv", text_column="review",
                                         label_column="sentiment")
            with pytest.raises(Overloaded) as full:                               # LPT_TRAIN_QUEUE=1
                await client.train("third", root / "train.csv", text_column="review", label_column="sentiment")
            assert full.value.status_code == 429
            # serving goes on: every classify answers while the job trains
            for _ in range(10):
                [[answer]] = await client.classify("great fun", task="served")
                assert answer.label in ("neg", "pos")
            assert (await client.get_training(slow.id)).state == "running"
            assert children_nice(server.proc.pid) == [10]        # the job yields the CPU to serving
            assert set(children_nice(server.proc.pid, training=False)) <= {0}   # the model processes do not
            metrics = httpx.get(server.url + "/metrics", timeout=10).text
            assert 'lpt_train_jobs{state="queued"} 1.0' in metrics and 'lpt_train_jobs{state="running"} 1.0' in metrics

            assert (await client.cancel_training(waiting.id)).state == "cancelled"      # dropped from the queue
            stopped = await client.cancel_training(slow.id)                             # stops at its next step
            assert stopped.state == "cancelled" and stopped.finished_at is not None
            await asyncio.sleep(1.0)
            after = await client.get_training(slow.id)
            assert after.state == "cancelled" and after.adapter is None
            assert after.progress.step < after.progress.steps
            with pytest.raises(NotFound):                                         # nothing was stored
                await client.get_adapter("slow")
            with pytest.raises(NotFound):
                await client.get_adapter("waiting")
            assert (await client.get_training(waiting.id)).started_at is None            # it never ran
            metrics = httpx.get(server.url + "/metrics", timeout=10).text
            assert 'lpt_train_jobs_ended_total{state="cancelled"} 2.0' in metrics
            assert 'lpt_train_job_duration_seconds_count{state="cancelled"} 1.0' in metrics   # one of them ran
            assert 'lpt_train_jobs{state="queued"} 0.0' in metrics and 'lpt_train_jobs{state="running"} 0.0' in metrics

    asyncio.run(scenario())
