"""Fixtures for the server's in-process tests: tiny random BERTs (no LM head, like minilm).
Helpers live in tiny_server.py: `from conftest import ...` would resolve to whichever conftest
pytest imported last when several test folders run together."""
from __future__ import annotations

import pytest

from tiny import make_backbone


@pytest.fixture(scope="session")
def tiny_bb():
    return make_backbone("bert", lm_head=False)


@pytest.fixture(scope="session")
def other_bb():
    """Same architecture and sizes, other weights: its adapters must be refused."""
    return make_backbone("bert", lm_head=False, seed=1)
