import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core machine: one torch thread avoids oversubscription stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
