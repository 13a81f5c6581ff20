"""The Python client examples of README.md and client/README.md run as written.

The code blocks are taken from the READMEs unchanged and run against the real app, served over
HTTP by uvicorn in a thread on a free port: the example finds the server through `LPT_URL`,
as its comment says. The app runs on the tiny random BERT with `sentiment` and `news-topic`
adapters (the demo adapters' names), and `my-task.safetensors` is in the working directory.
"""
from __future__ import annotations

import re

import httpx
import pytest
from live_server import serving
from readme_blocks import CLIENT_README, README, blocks
from tiny_server import adapter_file, tiny_app

pytestmark = pytest.mark.integration

ADMIN = "s3cret"          # the admin key the README's server is started with


def readme_python(section: str = "Python client") -> str:
    """The python block of the README section with this heading."""
    [block] = [b for b in blocks(README, "python") if b.section == section]
    assert f'admin_key="{ADMIN}"' in block.code and f"LPT_ADMIN_KEY={ADMIN} lpt serve" in README.read_text()
    return block.code


@pytest.fixture
def readme_server(tmp_path, tiny_bb, monkeypatch):
    """The URL of a server as the READMEs leave it: the demo adapters' names served, the admin key
    set, `my-task.safetensors` in the working directory, no key in the environment."""
    app = tiny_app(tmp_path / "store", tiny_bb, admin_key=ADMIN)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "my-task.safetensors").write_bytes(adapter_file(tiny_bb, "my-task", ["no", "yes"], seed=3))
    with serving(app) as url:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        for name, labels in (("sentiment", ["negative", "positive"]),
                             ("news-topic", ["world", "sports", "business", "sci/tech"])):
            r = httpx.put(f"{url}/v1/adapters/{name}", content=adapter_file(tiny_bb, name, labels),
                          headers=headers)
            assert r.status_code == 201, r.text
        monkeypatch.setenv("LPT_URL", url)
        for name in ("LPT_API_KEY", "LPT_ADMIN_KEY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(tmp_path / "work")
        yield url


def test_readme_python_client_example(readme_server, capsys):
    exec(compile(readme_python(), f"{README}#python-client", "exec"), {"__name__": "__readme__"})

    served = httpx.get(f"{readme_server}/v1/adapters/my-task").json()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4, lines
    for line in lines[:2]:                            # text, [(task, label, score), ...]
        assert re.search(r"\[\('sentiment', '(negative|positive)', [\d.]+\), "
                         r"\('news-topic', '(world|sports|business|sci/tech)', [\d.]+\)\]$", line), line
    assert lines[2] == "created my-task ['no', 'yes']"
    assert re.fullmatch(r"\['(no|yes)', '(no|yes)'\]", lines[3]), lines[3]
    assert served["name"] == "my-task" and served["labels"] == ["no", "yes"]


def test_client_readme_python_example(readme_server, capsys):
    """client/README.md's example names the server's URL: pointed at this one, it runs as written."""
    [block] = blocks(CLIENT_README, "python")
    assert 'Client("http://127.0.0.1:8080", admin_key="s3cret")' in block.code
    code = block.code.replace("http://127.0.0.1:8080", readme_server)
    exec(compile(code, f"{CLIENT_README}#python", "exec"), {"__name__": "__readme__"})

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    for line in lines[:2]:
        assert re.fullmatch(r"\[\('sentiment', '(negative|positive)', [\d.]+\), "
                            r"\('news-topic', '(world|sports|business|sci/tech)', [\d.]+\)\]", line), line
    assert lines[2] in ("no", "yes")
    assert httpx.get(f"{readme_server}/v1/adapters/my-task").json()["labels"] == ["no", "yes"]
