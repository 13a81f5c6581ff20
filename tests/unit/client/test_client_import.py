"""The client installs and imports without torch, transformers or the server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lpt_client

pytestmark = pytest.mark.unit

HEAVY = ("torch", "transformers", "numpy", "lpt", "lpt_server", "fastapi")


def test_import_pulls_in_no_heavy_modules() -> None:
    package_root = Path(lpt_client.__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), env.get("PYTHONPATH")]))
    code = (
        "import sys, lpt_client, lpt_client.cli\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_public_api() -> None:
    for name in ("Client", "AsyncClient", "ClassifyResult", "AdapterInfo", "LptError"):
        assert name in lpt_client.__all__ and hasattr(lpt_client, name)
    assert lpt_client.__version__
