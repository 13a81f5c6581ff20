"""An adapter's tensors in memory that processes share: one anonymous file (memfd) per adapter.

    shared = share(module)            # the module's tensors now live in shared.fd's pages
    tensors = mapped(os.dup(shared.fd), shared.size, shared.layout)   # in another process: the same pages

The model processes (model_process.py) would otherwise each hold a copy of every adapter they
serve: a megabyte each, hundreds of them. `share` moves a module's tensors into one memfd once
(the module then reads them from there: the server's own copy is that memory, not another); the
file descriptor crosses to a model process over its pipe (SCM_RIGHTS), which maps the same pages.
The memory is freed when the module and every process that mapped it have let go.
"""
from __future__ import annotations

import mmap
import os
import threading
import weakref
from dataclasses import dataclass

import torch

ALIGN = 64
DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.int64)}


@dataclass(frozen=True)
class Shared:
    fd: int                                          # open while the module lives
    size: int
    layout: dict[str, tuple[str, list[int], int]]    # state_dict name -> (dtype, shape, offset)


_lock = threading.Lock()     # two engine workers may share one module at once


def share(module: torch.nn.Module, name: str = "lpt-adapter") -> Shared:
    """Move `module`'s state into one memfd (the first call; later ones return the same)."""
    with _lock:
        got = module.__dict__.get("_shared")
        if got is not None:
            return got
        state = module.state_dict()
        layout, at = {}, 0
        for key, t in state.items():
            at = -(-at // ALIGN) * ALIGN
            layout[key] = (str(t.dtype).removeprefix("torch."), list(t.shape), at)
            at += t.numel() * t.element_size()
        size = max(at, 1)
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            views = mapped(fd, size, layout)
        except BaseException:
            os.close(fd)
            raise
        for key, t in state.items():
            views[key].copy_(t)
        module.load_state_dict(views, assign=True)       # the module now reads the shared pages
        shared = Shared(fd, size, layout)
        module.__dict__["_shared"] = shared
        weakref.finalize(module, os.close, fd)
        return shared


def mapped(fd: int, size: int, layout: dict[str, tuple[str, list[int], int]]) -> dict[str, torch.Tensor]:
    """Tensors over the file's pages (the mapping lives as long as any of them)."""
    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    out = {}
    for key, (dtype, shape, offset) in layout.items():
        dt = DTYPES[dtype]
        n = 1
        for s in shape:
            n *= s
        t = torch.frombuffer(mm, dtype=dt, count=n, offset=offset) if n else torch.empty(0, dtype=dt)
        out[key] = t.view(shape)
    return out
