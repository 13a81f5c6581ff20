"""The client CLI against the real app over HTTP: a missing or wrong admin key is reported as the
variable and flag to set, whatever words the server uses."""
from __future__ import annotations

import pytest
from live_server import serving
from tiny_server import ADMIN, adapter_file, tiny_app

from lpt_client.cli import main

pytestmark = pytest.mark.integration


def test_upload_without_then_with_the_admin_key(tmp_path, tiny_bb, monkeypatch, capsys):
    adapter = tmp_path / "my-task.safetensors"
    adapter.write_bytes(adapter_file(tiny_bb, "my-task"))
    for name in ("LPT_API_KEY", "LPT_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    with serving(tiny_app(tmp_path / "store", tiny_bb, admin_key=ADMIN)) as url:
        monkeypatch.setenv("LPT_URL", url)
        upload = ["adapters", "upload", "my-task", str(adapter)]

        assert main(upload) == 5
        err = capsys.readouterr().err
        assert "no admin key given: set LPT_ADMIN_KEY or pass --admin-key" in err, err
        assert "Authorization" not in err

        assert main([*upload, "--admin-key", "wrong"]) == 5
        assert "refused the admin key given: set LPT_ADMIN_KEY" in capsys.readouterr().err

        assert main(["adapters", "list"]) == 0 and "my-task" not in capsys.readouterr().out   # nothing stored
        monkeypatch.setenv("LPT_ADMIN_KEY", ADMIN)
        assert main(upload) == 0
        assert capsys.readouterr().out.startswith("created adapter my-task version ")
