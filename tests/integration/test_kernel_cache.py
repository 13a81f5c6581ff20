"""The server bounds the caches of compiled oneDNN kernels: without a bound, every new batch
shape kept a kernel, and a long-running server's memory grew with the shapes it had seen (the
kernels themselves, and the heap they pinned between the batches' freed buffers: bench/memory.py).
Two caches: oneDNN's own (GELU in float32) and the one torch's bfloat16 matrix products go through."""
import os
import subprocess
import sys

import pytest

from lpt.backbone import cpu_has_amx
from lpt_server.runtime import KERNEL_CACHE_ENTRIES, KERNEL_CACHES, bound_kernel_cache

# A fresh process runs one op on 800 row counts, the way a server's batches would arrive with new
# token counts, and prints how much its resident memory grew (MB) over the last 400, once a
# bounded cache is full: GELU in float32 (oneDNN's own cache) or a bfloat16 matrix product
# (torch's). Large buffers are mmapped (MALLOC_MMAP_THRESHOLD_) so that the heap's own ups and
# downs, which vary from run to run, do not hide what the kernels hold.
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
if sys.argv[2] == "gelu":
    x = torch.randn(802, 1536)
    op = torch.nn.functional.gelu
else:
    x, w = torch.randn(802, 384, dtype=torch.bfloat16), torch.randn(1536, 384, dtype=torch.bfloat16)
    op = lambda rows: torch.nn.functional.linear(rows, w)
for rows in range(1, 402):                 # first-call costs paid, a bounded cache filled
    op(x[:rows])
before = rss_mb()
for rows in range(402, 802):
    op(x[:rows])
print(rss_mb() - before)
"""


def growth_mb(mode: str, op: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_CACHES and not k.startswith("MALLOC_")}
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    out = subprocess.run([sys.executable, "-c", SHAPES_CHILD, mode, op], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from /proc")
@pytest.mark.parametrize("op", ["gelu", "bfloat16-matmul"])
def test_memory_stays_flat_over_many_batch_shapes(op):
    if op.startswith("bfloat16") and not cpu_has_amx():
        pytest.skip("bfloat16 products on a CPU without AMX can be emulated and too slow for this check")
    unbounded = growth_mb("unbounded", op)
    if unbounded < 4:
        pytest.skip(f"this torch keeps no per-shape kernels for {op} here (grew {unbounded:.1f} MB over 400 shapes)")
    bounded = growth_mb("bounded", op)
    assert bounded < unbounded / 4, f"{op} grew {bounded:.1f} MB over 400 shapes with the bound, {unbounded:.1f} MB without"


def test_a_bound_set_by_the_user_is_kept():
    env = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256"}
    bound_kernel_cache(env)
    assert env == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256", "LRU_CACHE_CAPACITY": str(KERNEL_CACHE_ENTRIES)}
    env = {"LRU_CACHE_CAPACITY": "1024"}
    bound_kernel_cache(env)
    assert env == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(KERNEL_CACHE_ENTRIES), "LRU_CACHE_CAPACITY": "1024"}
    env = {}
    bound_kernel_cache(env)
    assert env == {name: str(KERNEL_CACHE_ENTRIES) for name in KERNEL_CACHES}
