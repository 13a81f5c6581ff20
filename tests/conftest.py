import os
import sys

sys.path.insert(0, os.path.dirname(__file__))   # tests/tiny.py and friends
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a shared machine: one torch thread avoids oversubscription stalls (every test
    folder; the e2e servers get `--threads 1` from serve_process.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
