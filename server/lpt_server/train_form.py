"""The training form: a multipart/form-data body read as it streams in (bounded), its files
written to a job folder, and its fields turned into `lpt train`'s arguments, checked exactly
as `lpt train` checks them before anything is queued.

    form = TrainFormReader(limit)                        # feed(chunk) ..., finish()
    job = prepare_job(form, settings, backbone, root)     # BadRequest with lpt train's message

Fields are `lpt train`'s options with `_` for `-` (`text_column` is `--text-column`); files are
`data` (required), `dev` and `test`. Each file is saved under the name the client gave it (its
extension tells the format, as for `lpt train`), and messages name it so, never the job folder.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import upload
from .store_layout import check_name
from .train_jobs import TrainJob
from .train_workdirs import make_workdir

FILES = ("data", "dev", "test")
# `lpt train` options a client may set; the model, device, threads and output are the server's.
OPTIONS = ("text_column", "label_column", "text_pair_column", "format", "encoding_errors", "labels", "method",
           "layer", "prompt_length", "generator", "bottleneck", "head", "pooling", "template", "label_words",
           "max_length", "epochs", "lr", "head_lr", "weight_decay", "warmup", "batch_size", "seed")
LISTS = ("labels", "label_words")     # repeated fields (or one field, comma-separated)
MAX_FIELD_BYTES = 4096
MAX_PARTS = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NEGATIVE_NUMBER = re.compile(r"-\d+|-\d*\.\d+")     # what argparse takes for a value, not an option


_FILE = {"type": "string", "format": "binary"}
# The form as /docs shows it. Every option is sent as text, as `lpt train` reads it from a
# command line (its message names a value it cannot read).
FORM_SCHEMA = {
    "type": "object", "required": ["task", "data"],
    "properties": {
        "task": {"type": "string", "description": "the adapter's name (as for PUT /v1/adapters/{name})",
                 "example": "my-task"},
        "data": {**_FILE, "description": "training file: .csv, .tsv or .jsonl (the file name's extension, or "
                                          "`format`, tells which)"},
        "dev": {**_FILE, "description": "dev file for best-checkpoint selection (default: held out of data)"},
        "test": {**_FILE, "description": "test file: its metrics are reported with the job"},
        **{name: {"type": "string", "description": f"`lpt train --{name.replace('_', '-')}`"
                  + ("; repeat the field (or separate with commas) for several" if name in LISTS else "")}
           for name in OPTIONS},
    },
    "example": {"task": "my-task", "text_column": "text", "label_column": "label", "epochs": "2"},
}


class FormError(ValueError):
    """The form cannot be used; the message says what to send (-> 400)."""


class _Field:
    def __init__(self, name: str):
        self.name, self.data = name, bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > MAX_FIELD_BYTES:
            raise upload.UploadError(f"form field {self.name!r} is over {MAX_FIELD_BYTES} bytes")


class _File:
    def __init__(self, reader: "TrainFormReader", name: str, filename: str):
        self.reader, self.name, self.filename, self.data = reader, name, filename, bytearray()

    def feed(self, chunk: bytes) -> None:
        self.reader.file_bytes += len(chunk)
        if self.reader.file_bytes > self.reader.limit:
            raise upload.TooLarge(f"the training files are over the limit of {self.reader.limit} bytes")
        self.data += chunk


def safe_filename(filename: str | None, fallback: str) -> str:
    """The last path component of a client's file name, in safe characters (never hidden)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = _UNSAFE.sub("_", base).lstrip(".")[:100]
    return base or fallback


class TrainFormReader:
    """Fed the body chunk by chunk; keeps the fields and the files' bytes (files within `limit`
    bytes in all, the body within `limit` plus room for the form's own headers)."""

    def __init__(self, content_type: str, limit: int):
        separator = upload.boundary(content_type)
        if separator is None:
            raise upload.UploadError("POST /v1/train takes a multipart/form-data body: e.g. "
                                     "curl -F task=my-task -F data=@train.csv")
        self.limit, self.file_bytes, self.seen = limit, 0, 0
        self.fields: dict[str, list[_Field]] = {}
        self.files: dict[str, _File] = {}
        self.parts = upload.Parts(separator, self._on_part)

    def body_limit(self) -> int:
        return self.limit + upload.OVERHEAD

    def _on_part(self, headers: dict[str, str]) -> upload.Sink:
        name, filename = upload.disposition(headers)
        if self.parts.parts > MAX_PARTS:
            raise upload.UploadError(f"the form has more than {MAX_PARTS} parts")
        if not name:
            raise upload.UploadError("a form part has no name: each part needs Content-Disposition: form-data; "
                                     'name="..."')
        if name in FILES:
            if name in self.files:
                raise upload.UploadError(f"the form has two {name!r} files: send each file once")
            self.files[name] = _File(self, name, safe_filename(filename, name))
            return self.files[name]
        if name != "task" and name not in OPTIONS:
            raise upload.UploadError(f"unknown form field {name!r}: the fields are task, {', '.join(OPTIONS)}, "
                                     f"and the files {', '.join(FILES)}")
        if name in self.fields and name not in LISTS:
            raise upload.UploadError(f"the form has two {name!r} fields: send it once")
        part = _Field(name)
        self.fields.setdefault(name, []).append(part)
        return part

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > self.body_limit():
            raise upload.TooLarge(f"the training upload is over the limit of {self.limit} bytes")
        self.parts.feed(chunk)

    def finish(self) -> "TrainForm":
        self.parts.finish()
        fields: dict[str, list[str]] = {}
        for name, parts in self.fields.items():
            try:
                values = [p.data.decode("utf-8") for p in parts]
            except UnicodeDecodeError:
                raise upload.UploadError(f"form field {name!r} is not valid UTF-8") from None
            if name in LISTS:
                values = [v.strip() for value in values for v in value.split(",")]
            values = [v for v in values if v.strip()]     # an empty field (an HTML form's blank input): not set
            if values:
                fields[name] = values
        return TrainForm(fields, {n: (f.filename, bytes(f.data)) for n, f in self.files.items()})


@dataclass
class TrainForm:
    fields: dict[str, list[str]]
    files: dict[str, tuple[str, bytes]]       # form name -> (safe file name, content)
    task: str = field(init=False, default="")

    def __post_init__(self):
        if "data" not in self.files:
            raise FormError("the form has no 'data' file: send the training file, e.g. -F data=@train.csv")
        if "task" not in self.fields:
            raise FormError("the form has no 'task' field: name the adapter to train, e.g. -F task=my-task")
        self.task = check_name(self.fields["task"][0])

    def argv(self) -> list[str]:
        """The fields as `lpt train` options (paths come from `write`). A list's values are
        arguments of their own: one that argparse would read as an option (`--dev=/etc/...`)
        is refused."""
        out = []
        for name in OPTIONS:
            values = self.fields.get(name)
            if not values:
                continue
            flag = "--" + name.replace("_", "-")
            if name not in LISTS:
                out.append(f"{flag}={values[0]}")
                continue
            for v in values:
                if v.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(v):
                    raise FormError(f"form field {name!r}: the value {v[:40]!r} starts with '-': "
                                    "labels and label words cannot (negative numbers can)")
            out += [flag, *values]
        return out

    def write(self, workdir: Path) -> tuple[list[str], dict[str, str]]:
        """Write the files into `workdir`: their `lpt train` options, and each folder prefix ->
        "" (so that messages name a file as the client did)."""
        argv, shown = [], {}
        for name, (filename, data) in self.files.items():
            folder = workdir / name
            folder.mkdir()
            (folder / filename).write_bytes(data)
            argv += [f"--{name}", str(folder / filename)]
            shown[f"{folder}/"] = ""
        return argv, shown


@dataclass(frozen=True)
class Runner:
    """What the server fixes in every job: the model the child loads, its device and dtype,
    its threads."""

    model: str
    device: str
    dtype: str
    threads: int


# room for an adapter file's header (its config as JSON) beside its tensors
HEADER_ALLOWANCE = 64 * 1024


def prepare_job(form: TrainForm, runner: Runner, backbone, max_adapter_bytes: int | None = None) -> TrainJob:
    """Write the files to a new job folder and check everything `lpt train` checks before it
    trains (options, data, and the adapter configuration on `backbone`, the model the child
    will load), and that the adapter it makes is one the store takes (`max_adapter_bytes`):
    FormError with `lpt train`'s message. In a thread: it reads the files."""
    from lpt.adapter import tensor_bytes as adapter_tensor_bytes
    from lpt.cli import UsageError, check_training, parse_train_args, plan_training
    from lpt.data import DataError
    from lpt.encoding import tokenizer_lock
    from lpt.methods import ADAPTER_METHODS

    workdir = make_workdir()
    try:
        files, shown = form.write(workdir)
        out = workdir / "out" / f"{form.task}.safetensors"
        argv = [*form.argv(), "--task", form.task, *files, "--out", str(out), "--quiet",
                "--model", runner.model, "--device", runner.device, "--dtype", runner.dtype,
                "--threads", str(runner.threads)]
        job = TrainJob(form.task, argv, workdir, out, shown)
        try:
            args = parse_train_args(argv)
            if args.method not in ADAPTER_METHODS:
                raise UsageError(f"--method {args.method} writes no adapter file: the server trains "
                                 f"{', '.join(ADAPTER_METHODS)}")
            plan = plan_training(args)
            # the serving tokenizer is shared with the engine thread: HF fast tokenizers must
            # not be called from two threads at once (encoding.py)
            with tokenizer_lock(backbone.tokenizer):
                config = check_training(backbone, plan, args)
            tensor_bytes = adapter_tensor_bytes(config, backbone.hidden_size)
            if max_adapter_bytes is not None and tensor_bytes + HEADER_ALLOWANCE > max_adapter_bytes:
                raise UsageError(f"these options make an adapter of about {tensor_bytes / 2**20:.1f} MiB, over "
                                 f"the server's limit of {max_adapter_bytes / 2**20:.1f} MiB (LPT_MAX_ADAPTER_BYTES): "
                                 "lower --prompt-length or --bottleneck")
        except (DataError, UsageError) as e:
            raise FormError(job.clean(str(e))) from None
        return job
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
