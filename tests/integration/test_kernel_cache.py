"""The server bounds oneDNN's cache of compiled kernels: without a bound, every new batch shape
kept a kernel, and a long-running server's memory grew with the shapes it had seen (the kernels
themselves, and the heap they pinned between the batches' freed buffers: bench/memory.py)."""
import os
import subprocess
import sys

import pytest

from lpt_server.runtime import KERNEL_CACHE_ENTRIES, bound_kernel_cache

# A fresh process runs GELU (oneDNN's kernel in float32) on 600 row counts, the way a server's
# batches arrive with new token counts, and prints how much its resident memory grew (MB). Large
# buffers are mmapped (MALLOC_MMAP_THRESHOLD_) so that the heap's own ups and downs, which vary
# from run to run, do not hide what the kernels hold.
SHAPES_CHILD = r"""
import sys
import torch
if sys.argv[1] == "bounded":
    from lpt_server.runtime import bound_kernel_cache
    bound_kernel_cache()
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
torch.set_num_threads(1)
x = torch.randn(602, 1536)
torch.nn.functional.gelu(x[:1])            # first-call costs paid before measuring
before = rss_mb()
for rows in range(2, 602):
    torch.nn.functional.gelu(x[:rows])
print(rss_mb() - before)
"""


def growth_mb(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY" and not k.startswith("MALLOC_")}
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    out = subprocess.run([sys.executable, "-c", SHAPES_CHILD, mode], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from /proc")
def test_memory_stays_flat_over_many_batch_shapes():
    unbounded = growth_mb("unbounded")
    if unbounded < 4:
        pytest.skip(f"this torch keeps no per-shape kernels here (grew {unbounded:.1f} MB over 600 shapes)")
    bounded = growth_mb("bounded")
    assert bounded < unbounded / 4, f"grew {bounded:.1f} MB over 600 shapes with the bound, {unbounded:.1f} MB without"


def test_a_bound_set_by_the_user_is_kept():
    env = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256"}
    bound_kernel_cache(env)
    assert env == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256"}
    env = {}
    bound_kernel_cache(env)
    assert env == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(KERNEL_CACHE_ENTRIES)}
