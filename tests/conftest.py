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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the whole run; each test takes its own prefix (s3_server.url())."""
    from seaweed import running_s3

    with running_s3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def folding_volume(tmp_path):
    """A real case-insensitive, case-preserving volume (exFAT), or the test is skipped."""
    from store_files import case_folding_volume

    with case_folding_volume(tmp_path) as mnt:
        yield mnt
