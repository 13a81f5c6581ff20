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


def test_the_projects_own_install_gives_the_lpt_client_command() -> None:
    """The project's pyproject (what the README's install step installs) declares the same
    `lpt-client` command as the client's own, and the installed command runs."""
    import tomllib

    root = Path(__file__).resolve().parents[3]
    scripts = [tomllib.loads((p / "pyproject.toml").read_text())["project"]["scripts"] for p in (root, root / "client")]
    assert scripts[0]["lpt-client"] == scripts[1]["lpt-client"] == "lpt_client.cli:main"
    done = subprocess.run(["lpt-client", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "classify" in done.stdout, done.stderr
