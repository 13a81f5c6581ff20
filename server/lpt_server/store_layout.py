"""What both adapter stores (a directory, store.py; an S3 bucket, s3_store.py) share: the names of
a store's files, the names it accepts, and the errors it refuses with. See store.py for the layout."""
from __future__ import annotations

import errno
import re

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
POINTER = "current"
SUFFIX = ".safetensors"
MARKER = ".lpt-adapter"
ROOT_MARKER = ".lpt-store"
LOCKS = ".locks"
VERSION_RE = re.compile(r"^[0-9a-f]{64}$")
VERSION_FILE_RE = re.compile(r"^[0-9a-f]{64}\.safetensors$")
# write_atomic's temp files: ".<target>.<random>.tmp" next to the target
TEMP_RE = re.compile(r"^\.(current|[0-9a-f]{64}\.safetensors|\.lpt-adapter)\.[A-Za-z0-9_]+\.tmp$")
ROOT_TEMP_RE = re.compile(r"^\.\.lpt-store\.[A-Za-z0-9_]+\.tmp$")
KEEP_VERSIONS = 2   # the current one and the one before: a replica may be reading it right now
GRACE_S = 600.0     # a temp or unreferenced file younger than this may belong to a live writer
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
NOT_OURS_AT_ROOT = {"lost+found"}   # a fresh ext4 volume's own folder: ignored, never touched
MARKER_TEXT = b"written by lpt-serve: files here are managed by its adapter store\n"
ROOT_MARKER_TEXT = b"lpt-serve adapter store\n"


class InvalidName(ValueError):
    """Not a valid adapter name (-> 400)."""


class StoreError(Exception):
    """The store refused; nothing was changed."""


class NameTaken(InvalidName, StoreError):
    """The name's folder exists but the store did not write it: a name this store cannot use
    (-> 400, like any unusable name: the client's fix is another name)."""


class StoreFull(StoreError):
    """The store's disk is full or over quota (-> 507)."""


class NotAStore(StoreError):
    """The directory cannot be used as a store (at start)."""


class FileTooLarge(StoreError):
    """A stored version is larger than its reader takes: not read (the registry marks it unusable)."""

    def __init__(self, size: int | None, limit: int):
        super().__init__(f"adapter is {f'{size} bytes' if size is not None else 'larger'}, the limit is {limit} "
                         "bytes: not read")
        self.size, self.limit = size, limit


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (-> 503); nothing was changed. It recovers by itself."""


def shown(name: object, limit: int = 64) -> str:
    """A name as an error message quotes it: a megabyte of name is not echoed back in full."""
    if isinstance(name, str) and len(name) > limit:
        return f"{name[:limit]!r}... ({len(name)} characters)"
    return repr(name)


def check_name(name: str) -> str:
    """Names are single path components of safe characters: no '/', no '..', no hidden files."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(f"invalid adapter name {shown(name)}: use 1-64 characters from A-Z a-z 0-9 . _ -, "
                          "starting with a letter or digit")
    return name


def is_store_file(filename: str) -> bool:
    """A file the store writes into a name's folder (and so may delete)."""
    return (filename in (POINTER, MARKER) or VERSION_FILE_RE.fullmatch(filename) is not None
            or TEMP_RE.fullmatch(filename) is not None)
