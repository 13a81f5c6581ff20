"""Every server setting in one frozen object, read once at start (env `LPT_*`, then flags).

    settings = Settings()                       # env only
    settings = Settings(port=9000, store="/s")  # explicit values win over env (what `lpt serve` does)

Nothing reads the environment at import time: `create_app(settings)` gets this object.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import urlsplit
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20
HOST_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def origin(text: str) -> str:
    """An origin as browsers send it (`Origin:`), which is compared as a string: lowercase scheme
    and host, no default port, IPv6 compressed. ValueError for anything else (a path, a port out
    of range, not http or https); a trailing slash is dropped."""
    try:
        parts = urlsplit(text)
        port, host = parts.port, parts.hostname or ""
    except ValueError:
        raise ValueError(f"{text!r} is not an origin: scheme://host[:port] (https://app.example.com)") from None
    if parts.scheme.lower() not in ("http", "https") or parts.path not in ("", "/") or parts.query or parts.fragment \
            or parts.username or parts.password or port == 0 or not host:
        raise ValueError(f"{text!r} is not an origin: scheme://host[:port], no path (https://app.example.com)")
    scheme = parts.scheme.lower()
    if "[" in parts.netloc:
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError(f"{text!r} is not an origin: {host!r} is not an IPv6 address") from None
    elif not HOST_RE.fullmatch(host):
        raise ValueError(f"{text!r} is not an origin: {host!r} is not a host name")
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def default_store() -> Path:
    """The per-user data directory (XDG), never the working directory: a store inside a source
    tree would share folders with it."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"   # the spec ignores a relative one
    return base / "lpt-serve" / "adapters"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LPT_", frozen=True, extra="forbid")

    # the model
    model: str = Field("minilm", description="model id, local path, or 'minilm' (the embedded all-MiniLM-L6-v2)")
    device: str = Field("cpu", description="cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "bfloat16", "float16", "int8", "auto"] = Field(
        "float32", description="model dtype; int8 (CPU only): the blocks' linear layers as int8 products, faster, "
        "answers move slightly; auto: bfloat16 on a GPU and on a CPU with AMX, else float32")
    threads: int = Field(0, ge=0, description="CPU threads the model uses in all (0: OMP_NUM_THREADS if set, else "
                         "one per core); shared out among the engine workers")
    workers: int = Field(0, ge=0, description="engine workers: batches run at once, each on threads/workers torch "
                         "threads (0: one per thread on a CPU, at most 8; one on a GPU)")
    model_processes: bool = Field(True, description="on a CPU (Linux), each engine worker runs the model in a process "
                                  "of its own, forked once the model has loaded (the weights are shared, not "
                                  "copied), so the request path's Python does not slow the model down; false: "
                                  "worker threads of the server's process")

    # where
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8080, ge=0, le=65535, description="bind port")
    store: str = Field(default_factory=lambda: str(default_store()), description="adapter store: a directory "
                       "or s3://BUCKET/PREFIX (AWS_* variables), shared by replicas; default $XDG_DATA_HOME/"
                       "lpt-serve/adapters, else ~/.local/share/lpt-serve/adapters")
    store_cache_mb: int = Field(256, ge=0, description="an s3:// store's in-memory cache of adapter files, MiB")
    store_timeout_s: float = Field(5.0, gt=0, description="each call to an s3:// store ends within this, "
                                   "retries included: uploads and deletes then answer 503, loaded adapters "
                                   "keep serving")
    demo_adapters: bool = Field(True, description="seed the store with the shipped demo adapters")

    # batching and backpressure
    max_batch_rows: int = Field(64, ge=1, description="a batch closes at this many rows")
    max_batch_tokens: int = Field(8192, ge=1, description="... or at this many padded tokens (rows x longest)")
    max_wait_ms: float = Field(5.0, ge=0, description="... or when its oldest row has waited this long")
    max_padding: float = Field(1.3, ge=1.0, description="a batch is cut into length buckets whose padded "
                               "tokens stay within this factor of the real ones (a large value: one bucket)")
    queue_limit: int = Field(1024, ge=1, description="rows waiting at most; more: 429")
    request_timeout_s: float = Field(30.0, gt=0, description="a request not answered by then: 504")

    # request and upload limits
    max_input_tokens: int = Field(256, ge=1, description="tokens per input (text + pair, no special tokens)")
    truncate: bool = Field(True, description="cut longer inputs to max_input_tokens; false: 413 (a request's "
                           "\"truncate\" overrides it)")
    max_inputs: int = Field(256, ge=1, description="inputs per request; more: 413")
    max_adapter_bytes: int = Field(64 * MiB, ge=1, description="largest adapter file accepted")
    max_body_bytes: int = Field(2 * MiB, ge=1, description="largest classify request body; more: 413")

    # training jobs (POST /v1/train)
    max_train_bytes: int = Field(64 * MiB, ge=1, description="largest training upload (data, dev and test "
                                 "files together); more: 413")
    train_queue: int = Field(4, ge=1, description="training jobs waiting at most (one runs at a time); more: 429")
    train_threads: int = Field(1, ge=1, description="torch CPU threads of the training process (serving keeps "
                               "its own)")
    train_nice: int = Field(10, ge=0, le=19, description="the training process's CPU niceness: above 0, serving "
                            "gets the CPU first when both want it")
    train_journal: Path | None = Field(None, description="a JSON file where this server keeps its training "
                                       "jobs' records across restarts (a job a restart interrupted is "
                                       "reported failed); unset: in memory only. One file per server")

    # slow clients: a connection holds a request only this long
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this "
                                    "(from its first byte); else 408 and the connection is closed")
    body_timeout_s: float = Field(60.0, gt=0, description="a request's body must arrive within this; else 408")

    # memory
    max_resident_adapters: int = Field(256, ge=1, description="adapters kept loaded (LRU)")
    cache_entries: int = Field(4096, ge=0, description="layer-k hidden-state cache entries (0: off)")
    cache_mb: float = Field(64, gt=0, description="layer-k hidden-state cache memory budget, MiB")
    store_recheck_ms: float = Field(500.0, ge=0, description="how often a served adapter's store pointer is "
                                    "re-read: a replacement or delete through another replica is seen within "
                                    "this (a new name is looked up at once)")

    # auth and logs
    api_key: str | None = Field(None, description="Bearer key for inference (unset: open)")
    cors_origins: str = Field("", description="web origins whose pages may call the API from a browser, "
                              "comma-separated (https://app.example.com), or * for any; empty: none (the "
                              "console, served by the server itself, needs none)")
    admin_key: str | None = Field(None, description="Bearer key for adapter writes (unset: writes refused)")
    log_format: Literal["text", "json"] = Field("text", description="log line format")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @field_validator("store", mode="before")
    @classmethod
    def _path_is_text(cls, v):
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: str) -> str:
        origins = [o.strip() for o in v.split(",") if o.strip()]
        if "*" in origins and len(origins) > 1:
            raise ValueError("* allows every origin: give it alone, or list the origins")
        return ",".join(o if o == "*" else origin(o) for o in origins)

    @property
    def drain_seconds(self) -> int:
        """How long a stopping server lets in-flight requests finish: the request timeout and 5 s."""
        return int(self.request_timeout_s) + 5

    @property
    def cors_origin_list(self) -> list[str]:
        return self.cors_origins.split(",") if self.cors_origins else []

    @field_validator("api_key", "admin_key", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        # LPT_ADMIN_KEY= (empty) in a compose file means "no key", not "the empty key"
        return None if isinstance(v, str) and not v.strip() else v

    def public(self) -> dict:
        """The settings as /info shows them: keys only say whether they are set."""
        out = self.model_dump(mode="json")
        for k in ("api_key", "admin_key"):
            out[k] = "set" if out[k] else None
        return out
