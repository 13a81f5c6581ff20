"""The adapter store's interface, and the backend a location names.

    store = open_store("/srv/adapters")                    # a directory (store.Store)
    store = open_store("s3://bucket/prefix", timeout_s=5)  # an S3 bucket (s3_store.S3Store)

Both keep the same contract (tests/integration/test_store_contract.py runs it on both): versions
named by the sha256 of their bytes; one `current` pointer per name, replaced so that readers see
the old version or the new one, never a partial file, and so that two writers of one name never
lose an update silently; a pointer never names a missing version; the store deletes only what it
wrote. The registry knows only this interface.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from .store import Health, Store, Stored
from .store_layout import StoreError, StoreUnavailable

S3_SCHEME = "s3://"


class StoreConflict(StoreError):
    """Other writers kept changing the name while this write tried to land (-> 409); nothing was
    changed by this call: retry."""


@runtime_checkable
class AdapterStore(Protocol):
    kind: str           # "directory" or "s3"
    location: str       # what logs and /info show: the directory, or s3://bucket/prefix

    def names(self) -> list[str]:
        """Every name with a current version, sorted."""

    def current(self, name: str) -> str | None:
        """The current version (sha256) of a name, or None."""

    def versions(self) -> dict[str, str]:
        """Every name's current version, as names() and current() would give them, in as few
        calls to the backend as it allows (a listing of thousands of adapters)."""

    def read(self, name: str, version: str, max_bytes: int | None = None) -> bytes:
        """A version's bytes. FileNotFoundError when that version is gone (replaced meanwhile);
        FileTooLarge, having read at most about max_bytes, when it is larger."""

    def put(self, name: str, data: bytes) -> Stored:
        """Store a version and make it current (validate the bytes before)."""

    def delete(self, name: str) -> bool:
        """Remove a name; False if it had no current version."""

    def sweep(self, grace_s: float | None = None) -> list[str]:
        """Remove what interrupted writers left; returns what went."""

    def health(self) -> Health:
        """Whether the last call reached the store (no I/O)."""

    def ping(self) -> Health:
        """Reach the store now (one small request); never raises."""

    def close(self) -> None:
        """Release connections (at shutdown)."""


def open_store(location: str, *, timeout_s: float = 5.0, cache_bytes: int = 256 << 20) -> AdapterStore:
    """The store at `location`: an s3:// URL (credentials and endpoint from the AWS_* variables)
    or a directory. Raises StoreError (NotAStore, StoreUnavailable) when it cannot be used."""
    if location.startswith(S3_SCHEME):
        from .s3_store import S3Store     # only an S3 store needs the S3 client

        return S3Store(location, timeout_s=timeout_s, cache_bytes=cache_bytes)
    return Store(location)
