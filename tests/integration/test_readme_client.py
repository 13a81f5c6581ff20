"""The README's Python client example runs as written.

The code block is taken from README.md unchanged and run against the real app, served over
HTTP by uvicorn in a thread on a free port: the example finds the server through `LPT_URL`,
as its comment says. The app runs on the tiny random BERT with `sentiment` and `news-topic`
adapters (the demo adapters' names), and `my-task.safetensors` is in the working directory.
"""
from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from live_server import serving
from tiny_server import adapter_file, tiny_app

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
ADMIN = "s3cret"          # the admin key the example's server was started with


def readme_python(section: str = "## Python client") -> str:
    """The first ```python block of the README section with this heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n" + section + "\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end != -1 else len(text)]
    match = re.search(r"^```python\n(.*?)^```$", body, re.S | re.M)
    assert match, f"no python block under {section!r} in {README}"
    return match.group(1)


def test_readme_python_client_example(tmp_path, tiny_bb, monkeypatch, capsys):
    code = readme_python()
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

        exec(compile(code, f"{README}#python-client", "exec"), {"__name__": "__readme__"})

        served = httpx.get(f"{url}/v1/adapters/my-task").json()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4, lines
    for line in lines[:2]:                            # text, [(task, label, score), ...]
        assert re.search(r"\[\('sentiment', '(negative|positive)', [\d.]+\), "
                         r"\('news-topic', '(world|sports|business|sci/tech)', [\d.]+\)\]$", line), line
    assert lines[2] == "created my-task ['no', 'yes']"
    assert re.fullmatch(r"\['(no|yes)', '(no|yes)'\]", lines[3]), lines[3]
    assert served["name"] == "my-task" and served["labels"] == ["no", "yes"]
