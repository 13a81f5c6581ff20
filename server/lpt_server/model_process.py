"""The model in a process of its own: one per engine worker, forked once the model has loaded.

    procs = fork_model(engine, 2, torch_threads=1, adapters=256)   # one per engine worker
    procs[0].predict(rows)       # what Engine.predict answers, computed in the child
    procs[0].close()

Why: in one process the event loop, the tokenizers and every engine worker take turns holding
the GIL between torch's operators, and a small model runs many short operators. Measured on two
cores (bench/README.md), the engine in its own process ran a row in 5.5 ms against 6.2 ms next
to the request path, and the server's throughput rose 10-15%. Forked after the load, a child
shares the parent's weights page for page (nothing writes them), so the model is in memory once.

The hand-off is a pipe carrying token ids in and logits out, in a frame of our own (a JSON
header and raw little-endian arrays): nothing is pickled. An adapter's tensors are not copied:
the parent moves them into shared memory once (shared_weights.py) and passes the file
descriptor with the batch that first needs it, so every process reads the same pages; the
parent keeps a mirror of what each child holds and tells it what to let go (at most `adapters`
kept, the registry's own bound). Rows are tokenized in the parent (the server tokenizes before
batching; rows that come untokenized are encoded here with the adapter's template); the softmax
and labels are read in the parent (`lpt.engine.predictions`).

A child that dies (killed, out of memory) makes its worker not alive at once (`gone` says why):
/ready says 503 and the server exits for its supervisor to restart it, as for a worker thread
that dies; a batch already on its way raises ModelProcessLost in the worker thread, which stops.
A child whose parent dies sees its pipe close and exits.
"""
from __future__ import annotations

import atexit
import gc
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import struct
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.reduction import recvfds, sendfds

import torch

from lpt import AdapterConfig, LatePrompt, Row
from lpt.encoding import Encoded
from lpt.engine import CacheStats, Engine, RowError, predictions

from .shared_weights import Shared, mapped, share
from .worker import IDLE_TRIM_S, EngineLost, release_free_memory


log = logging.getLogger("lpt_server.model_process")

_LEN = struct.Struct("<I")
_DTYPES = {"int64": torch.int64, "float32": torch.float32, "uint8": torch.uint8}


class ModelProcessLost(EngineLost):
    """The model process stopped answering (it died): the worker that fed it stops."""


# ---- the frame: a JSON header, then raw arrays ----------------------------------------------
def pack(header: dict, arrays: dict[str, torch.Tensor | bytes]) -> bytes:
    """header + named arrays (tensors of _DTYPES, or raw bytes) -> one message."""
    layout, blobs, at = {}, [], 0
    for name, a in arrays.items():
        if isinstance(a, torch.Tensor):
            dtype = next(k for k, v in _DTYPES.items() if v == a.dtype)
            raw = a.contiguous().numpy().tobytes()
            layout[name] = [dtype, list(a.shape), at, at + len(raw)]
        else:
            raw = bytes(a)
            layout[name] = ["bytes", [], at, at + len(raw)]
        blobs.append(raw)
        at += len(raw)
    head = json.dumps({"header": header, "arrays": layout}).encode()
    return b"".join([_LEN.pack(len(head)), head, *blobs])


def unpack(message: bytes) -> tuple[dict, dict[str, torch.Tensor | bytes]]:
    (n,) = _LEN.unpack_from(message)
    head = json.loads(message[_LEN.size:_LEN.size + n])
    body = memoryview(message)[_LEN.size + n:]
    arrays: dict[str, torch.Tensor | bytes] = {}
    for name, (dtype, shape, start, end) in head["arrays"].items():
        if dtype == "bytes":
            arrays[name] = bytes(body[start:end])
        else:
            t = torch.frombuffer(bytearray(body[start:end]), dtype=_DTYPES[dtype]) if end > start \
                else torch.empty(0, dtype=_DTYPES[dtype])
            arrays[name] = t.reshape(shape)
    return head["header"], arrays


def rows_message(encs: list[Encoded], slots: list[int], add: list[dict], drop: list[int]) -> bytes:
    """A batch of encoded rows, each with its adapter's slot in the child; adapters to add first
    (slot, config, shared memory size and layout: their descriptors follow the message, in this
    order) and slots to let go."""
    lengths = [len(e.input_ids) for e in encs]
    typed = [e.token_type_ids is not None for e in encs]
    arrays: dict[str, torch.Tensor | bytes] = {
        "ids": torch.tensor([i for e in encs for i in e.input_ids], dtype=torch.int64),
        "types": torch.tensor([i for e in encs if e.token_type_ids is not None for i in e.token_type_ids],
                              dtype=torch.int64),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "typed": torch.tensor(typed, dtype=torch.uint8),
        "readout": torch.tensor([e.readout for e in encs], dtype=torch.int64),
        "slots": torch.tensor(slots, dtype=torch.int64),
    }
    return pack({"add": add, "drop": drop}, arrays)


def _sock(conn) -> socket.socket:
    """The pipe's socket, to pass file descriptors over it (a duplicate, made once per end)."""
    return socket.socket(fileno=os.dup(conn.fileno()))


# Linux takes at most 253 descriptors in one SCM_RIGHTS message
FDS_PER_MESSAGE = 250


def send_fds(sock: socket.socket, fds: list[int]) -> None:
    for i in range(0, len(fds), FDS_PER_MESSAGE):
        sendfds(sock, fds[i:i + FDS_PER_MESSAGE])


def recv_fds(sock: socket.socket, n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        out += recvfds(sock, min(FDS_PER_MESSAGE, n - len(out)))
    return out


def read_rows(header: dict, arrays: dict) -> tuple[list[Encoded], list[int]]:
    ids, types = arrays["ids"].tolist(), arrays["types"].tolist()
    encs, at, at_t = [], 0, 0
    for n, typed, readout in zip(arrays["lengths"].tolist(), arrays["typed"].tolist(), arrays["readout"].tolist()):
        tt = None
        if typed:
            tt, at_t = tuple(types[at_t:at_t + n]), at_t + n
        encs.append(Encoded(tuple(ids[at:at + n]), tt, readout))
        at += n
    return encs, arrays["slots"].tolist()


# ---- the child ------------------------------------------------------------------------------
# The parent's ends of every model process's pipe. A child closes all it inherited: a pipe
# reports its parent gone (or closing it) only once no process holds the parent's end.
_PARENT_ENDS: set = set()


def _child_main(engine: Engine, conn, torch_threads: int) -> None:
    for end in list(_PARENT_ENDS):
        end.close()
    # The server's handlers were inherited. Ctrl-C and SIGTERM are the server's to handle, also
    # when they reach the whole process group (a terminal, systemd): the server drains, then
    # closes the pipes, and the process exits when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(torch_threads)
    sock = _sock(conn)
    adapters: dict[int, LatePrompt] = {}
    ran, trims = False, 0
    while True:
        try:
            if ran and not conn.poll(IDLE_TRIM_S):     # idle since the last batch: give freed memory back
                release_free_memory()
                ran, trims = False, trims + 1
                continue
            header, arrays = unpack(conn.recv_bytes())
            fds = recv_fds(sock, len(header["add"])) if header["add"] else []
        except (EOFError, OSError, RuntimeError):   # the parent closed the pipe or died
            # Straight out: multiprocessing's exit path runs the threading module's shutdown,
            # which in a child forked from a thread other than the main one fails (exit code 1).
            os._exit(0)
        try:
            for slot in header["drop"]:
                adapters.pop(slot, None)
            for add, fd in zip(header["add"], fds):
                adapters[add["slot"]] = _adapter(engine, add, fd)
            encs, slots = read_rows(header, arrays)
            rows = [Row(adapters[s], "", None, e) for s, e in zip(slots, encs)]
            failed, pos, widths, flat = engine.run(rows)
            order = [pos.get(i, -1) for i in range(len(rows))]
            reply = pack({"failed": {str(i): str(e) for i, e in failed.items()}, "error": None, "held": len(adapters),
                          "trims": trims,
                          "cache": [engine.cache.stats.hits, engine.cache.stats.misses, engine.cache.stats.bytes]},
                         {"pos": torch.tensor(order, dtype=torch.int64),
                          "widths": torch.tensor(widths, dtype=torch.int64),
                          "logits": flat if flat is not None else torch.zeros(0, 0)})
        except Exception as e:           # the batch failed; the process lives on, holding nothing
            adapters.clear()             # (the parent forgets what it sent too: both start afresh)
            reply = pack({"failed": {}, "error": repr(e), "cache": None, "held": 0, "trims": trims}, {})
        finally:
            for fd in fds:
                os.close(fd)              # mapped, or not needed
        conn.send_bytes(reply)
        ran = True


def _adapter(engine: Engine, add: dict, fd: int) -> LatePrompt:
    """The parent's adapter, built here on the parent's shared pages (checked when it was loaded)."""
    config, problems = AdapterConfig.from_json(add["config"])
    if config is None:
        raise ValueError("; ".join(problems))
    module = LatePrompt(config, engine.backbone)
    module.load_state_dict(mapped(fd, add["size"], add["layout"]), assign=True)
    return module.eval().requires_grad_(False)


# ---- the parent's side ----------------------------------------------------------------------
def fork_model(engine: Engine, n: int, torch_threads: int = 1, adapters: int = 256) -> list["ModelProcess"]:
    """n model processes for n engine workers, sharing out the engine's layer-k cache.

    Objects alive now (the model's modules, the libraries) are moved out of the garbage
    collector's reach first (gc.freeze), here and so in the children: a collection writes to
    every object it visits, and each page written after the fork stops being shared."""
    gc.collect()
    gc.freeze()          # for good: objects alive at startup (modules, libraries) live as long
    _allow_open_files(adapters)
    return [ModelProcess(engine, torch_threads, adapters, cache_share=1 / n) for _ in range(n)]


# Closed at the interpreter's exit, before multiprocessing's own exit hook, which would send
# them a SIGTERM they ignore and wait for them without a bound (a server that exits without its
# shutdown having run: a second Ctrl-C).
_LIVE: "weakref.WeakSet[ModelProcess]" = weakref.WeakSet()
atexit.register(lambda: [p.close() for p in list(_LIVE)])

DESCRIPTORS_PER_ADAPTER = 2      # the memfd, and the duplicate its mapping keeps


def _allow_open_files(adapters: int, spare: int = 1024) -> None:
    """The server holds two open descriptors per adapter it has shared: raise the soft limit on
    open files (up to the hard one) so that `adapters` of them leave `spare` for connections."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = DESCRIPTORS_PER_ADAPTER * adapters + spare
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    if limit < want:
        log.warning("open files are limited to %d (ulimit -n): %d resident adapters need about %d; "
                    "raise the limit or lower LPT_MAX_RESIDENT_ADAPTERS", limit, adapters, want)


@dataclass
class _Held:
    adapter: weakref.ref       # the parent's module (an id is only reused once it is gone)
    slot: int


class ModelProcess:
    """One child process running `engine`'s model; `predict` as Engine.predict. One caller at a
    time (each engine worker thread has its own)."""

    def __init__(self, engine: Engine, torch_threads: int = 1, adapters: int = 256, cache_share: float = 1.0):
        self.engine = engine              # the parent's: its backbone, its encoders
        self.backbone = engine.backbone
        self.capacity = adapters
        self._held: OrderedDict[int, _Held] = OrderedDict()   # id(module) -> slot, least recent first
        self._slots = iter(range(2**62))
        self._pending_drop: list[int] = []
        self._lock = threading.Lock()
        self.cache = CacheStats()           # the child's layer-k cache, as of its last answer
        self.child_adapters = 0             # adapters the child holds, as of its last answer
        self.child_trims = 0                # times the child gave freed memory back when idle
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe()
        child = Engine(engine.backbone, int(engine.cache.entries * cache_share), engine.max_padding,
                       engine.min_bucket_rows,
                       None if engine.cache.max_bytes is None else int(engine.cache.max_bytes * cache_share),
                       engine.stack)
        self._sock = _sock(self._conn)
        _PARENT_ENDS.add(self._conn)
        _PARENT_ENDS.add(self._sock)
        self.process = ctx.Process(target=_child_main, args=(child, child_end, torch_threads),
                                   name="lpt-model", daemon=True)
        self.process.start()
        child_end.close()
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def predict(self, rows: list[Row]) -> list:
        if not rows:
            return []
        with self._lock:
            items, failed = self.engine.encode(rows)        # rows the server tokenized pass through
            if not items:
                return [failed[i] for i in range(len(rows))]
            served = [rows[it.row_index] for it in items]
            message, fds = self._message(served, [it.enc for it in items])
            try:
                self._conn.send_bytes(message)
                if fds:
                    send_fds(self._sock, fds)
                header, arrays = unpack(self._conn.recv_bytes())
            except (EOFError, OSError) as e:
                # Dead, or alive with half a message: either way this pipe cannot be used again.
                if self.alive:
                    self.process.kill()
                    raise ModelProcessLost(f"the hand-off to the model process (pid {self.pid}) failed ({e!r}); "
                                           "it was stopped") from e
                self.process.join(1.0)
                raise ModelProcessLost(self.gone or f"the model process (pid {self.pid}) stopped answering") from e
        self.child_adapters = header["held"]
        self.child_trims = header["trims"]
        if header["error"] is not None:
            self._held.clear()
            self._pending_drop.clear()
            raise RuntimeError(f"in the model process: {header['error']}")
        self.cache = CacheStats(*header["cache"])
        got = predictions(served, {int(i): RowError(m) for i, m in header["failed"].items()},
                          {i: p for i, p in enumerate(arrays["pos"].tolist()) if p >= 0},
                          arrays["widths"].tolist(), arrays["logits"] if arrays["logits"].numel() else None)
        out: list = [None] * len(rows)
        for i, e in failed.items():
            out[i] = e
        for it, p in zip(items, got):
            out[it.row_index] = p
        return out

    def _message(self, rows: list[Row], encs: list[Encoded]) -> tuple[bytes, list[int]]:
        """The batch, with the adapters this child lacks (and their descriptors) and those it
        should let go."""
        add: list[dict] = []
        fds: list[int] = []
        used: set[int] = set()
        slots = []
        new = {id(r.adapter): r.adapter for r in rows if not self._holds(r.adapter)}
        # in shared memory before anything is recorded: a failure here leaves the mirror as it was
        shared: dict[int, Shared] = {k: share(a, f"lpt-adapter-{a.config.task}") for k, a in new.items()}
        for r in rows:
            key = id(r.adapter)
            sh = shared.pop(key, None)                # new (or an old id reused): recorded once
            if sh is not None:
                old = self._held.pop(key, None)
                if old is not None:
                    self._pending_drop.append(old.slot)
                self._held[key] = _Held(weakref.ref(r.adapter), next(self._slots))
                add.append({"slot": self._held[key].slot, "config": r.adapter.config.to_json(),
                            "size": sh.size, "layout": sh.layout})
                fds.append(sh.fd)
            held = self._held[key]
            self._held.move_to_end(key)
            used.add(key)
            slots.append(held.slot)
        for key, held in list(self._held.items()):   # modules gone here (replaced, deleted): gone there
            if held.adapter() is None:
                self._pending_drop.append(self._held.pop(key).slot)
        for key in list(self._held):                  # least recent first; never this batch's
            if len(self._held) <= self.capacity:
                break
            if key not in used:
                self._pending_drop.append(self._held.pop(key).slot)
        drop, self._pending_drop = self._pending_drop, []
        return rows_message(encs, slots, add, drop), fds

    def _holds(self, adapter) -> bool:
        held = self._held.get(id(adapter))
        return held is not None and held.adapter() is adapter

    @property
    def alive(self) -> bool:
        # Its sentinel, not waitpid: a child that something else in this process reaped (a
        # child watcher that waits for any pid) would read as alive for good to waitpid.
        return not multiprocessing.connection.wait([self.process.sentinel], 0)

    @property
    def gone(self) -> str | None:
        """Why the process is no longer there (None while it is)."""
        if self.alive:
            return None
        return f"the model process (pid {self.pid}) exited with code {self.process.exitcode}"

    def close(self, timeout: float = 5.0) -> None:
        """Close the pipe (the child exits when it reads its end), then wait for it."""
        _LIVE.discard(self)
        for end in (self._conn, self._sock):
            _PARENT_ENDS.discard(end)
            try:
                end.close()
            except OSError:
                pass
        self.process.join(timeout)
        if self.alive:
            self.process.kill()
            self.process.join(timeout)
