"""Command line for an lpt-serve server: classify texts, manage adapters.

Usage:
    lpt-client classify --task T [--task T2 ...] [--raw-scores] [--[no-]truncate] [--json] [TEXT ... | - | --file F]
    lpt-client adapters list [--json]
    lpt-client adapters show NAME [--json]
    lpt-client adapters upload NAME FILE [--json]
    lpt-client adapters delete NAME [--json]
    lpt-client train --task T --data FILE [--dev FILE] [--test FILE] [lpt train options ...]

(`lpt classify ...` and `lpt adapters ...` run the same code; `lpt train --remote URL ...` runs
`train`, see train_cli.py.)

Every subcommand takes --url (else LPT_URL, else http://127.0.0.1:8080), --api-key
(LPT_API_KEY), --admin-key (LPT_ADMIN_KEY), --timeout and --max-retries.

classify reads its texts from the arguments; from standard input, one per line, when the only
argument is `-` or there is none; or from --file, one per line. Blank lines are skipped. Texts
are sent in batches of --batch-size. It writes JSON Lines, one object per input
(`{"input": ..., "results": [{"task", "label", "score", "scores"?}], "truncated"?: true}`), when
--json is given or standard output is not a terminal; otherwise a table. Inputs the server cut to
its token limit before classifying them are marked `"truncated": true` and counted on stderr.

Exit codes:
    0  success
    2  usage error: bad arguments, no input texts, a file that cannot be read
    3  the server refused the request as bad (400, 413, 422, any other 4xx)
    4  not found: unknown task or adapter (404)
    5  authentication failed or not allowed (401, 403)
    6  server unavailable: connection failed, timed out, overloaded (429), or any 5xx
    7  a training job failed or was cancelled
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import httpx

from . import train_cli
from ._config import resolve_settings
from .errors import AuthError, BadRequest, LptError, NotFound
from .models import AdapterInfo, ClassifyResult
from .sync_client import Client

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BAD_REQUEST = 3
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_UNAVAILABLE = 6

_TEXT_COLUMN = 48  # characters of an input shown in the classify table


class UsageError(Exception):
    """Arguments parsed, but they do not make a runnable command."""


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "lpt-client",
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run the CLI with `argv` starting at the subcommand; return the exit code.

    `transport` replaces the network (tests, in-process servers).

    Example:
        >>> main(["classify", "--task", "sentiment", "hello"])  # doctest: +SKIP
        0
    """
    parser = build_parser(prog)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "forward_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra  # `train`: lpt train options for the server
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        with _make_client(args, transport) as client:
            return int(args.run(client, args, sys.stdout))
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AuthError as exc:
        print(f"{prog}: error: {auth_message(exc, args)}", file=sys.stderr)
        return EXIT_AUTH
    except LptError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:  # e.g. piped into `head`
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


def exit_code(error: LptError) -> int:
    """The exit code for a client error (see the module docstring)."""
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, AuthError):
        return EXIT_AUTH
    if isinstance(error, BadRequest):
        return EXIT_BAD_REQUEST
    return EXIT_UNAVAILABLE  # Overloaded, ServerError, ConnectionFailed, a garbled answer


def auth_message(error: AuthError, args: argparse.Namespace) -> str:
    """A refused key, told as what to set here (the server's own message names an HTTP header)."""
    if error.type == "writes_disabled":  # no key would help: the server says what to do
        return str(error)
    settings = resolve_settings(args.url, args.api_key, args.admin_key)
    if args.key == "admin":
        which, variable, flag, sent = "admin key", "LPT_ADMIN_KEY", "--admin-key", settings.admin_key
    else:  # the client sends the admin key for reads too when no API key is set
        which, variable, flag = "API key", "LPT_API_KEY", "--api-key"
        sent = settings.api_key or settings.admin_key
    status = f"{error.status_code} {error.type}"
    if not sent:
        return f"{status}: no {which} given: set {variable} or pass {flag}"
    return (f"{status}: the server refused the {which} given: set {variable} (or pass {flag}) to the "
            f"key the server was started with (the server said: {error.message})")


# -- parser ------------------------------------------------------------------------------------


def build_parser(prog: str = "lpt-client") -> argparse.ArgumentParser:
    """The argparse parser; each leaf command stores its handler in `args.run`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="server URL (default: $LPT_URL or http://127.0.0.1:8080)")
    common.add_argument("--api-key", help="inference key (default: $LPT_API_KEY)")
    common.add_argument("--admin-key", help="adapter write key (default: $LPT_ADMIN_KEY)")
    common.add_argument("--timeout", type=positive_float, default=None,
                        help="seconds to wait on the server (default 60)")
    common.add_argument("--max-retries", type=int, default=3, help="retries on 429/503/network")
    common.add_argument("--json", action="store_true", help="print JSON")

    parser = argparse.ArgumentParser(prog=prog, description="Client for an lpt-serve server.")
    parser.set_defaults(key="api")  # which key a command needs; upload and delete need the admin key
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser("classify", parents=[common], help="classify texts")
    classify.add_argument("texts", nargs="*", metavar="TEXT", help="texts; `-` or none: stdin")
    classify.add_argument(
        "--task", dest="tasks", action="append", required=True, help="task (repeatable)"
    )
    classify.add_argument("--file", help="read texts from this file, one per line")
    classify.add_argument("--raw-scores", action="store_true", help="include every label's score")
    classify.add_argument("--truncate", action=argparse.BooleanOptionalAction, default=None,
                          help="cut texts over the server's token limit (--truncate) or have them refused "
                               "(--no-truncate); default: the server's LPT_TRUNCATE")
    classify.add_argument("--batch-size", type=_positive_int, default=32, help="texts per request")
    classify.set_defaults(run=run_classify)

    adapters = commands.add_parser("adapters", help="list, show, upload, delete adapters")
    actions = adapters.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="list adapters").set_defaults(
        run=run_list
    )
    show = actions.add_parser("show", parents=[common], help="show one adapter")
    show.add_argument("name", type=_name)
    show.set_defaults(run=run_show)
    upload = actions.add_parser("upload", parents=[common], help="upload an adapter file")
    upload.add_argument("name", type=_name)
    upload.add_argument("file")
    upload.set_defaults(run=run_upload, key="admin")
    delete = actions.add_parser("delete", parents=[common], help="delete an adapter")
    delete.add_argument("name", type=_name)
    delete.set_defaults(run=run_delete, key="admin")
    train_cli.add_parser(commands, common, UsageError, positive_float)
    return parser


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def positive_float(value: str) -> float:
    """A number of seconds above zero (argparse type)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {value!r}")
    return number


def _name(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("an adapter name must not be empty")
    return value


def _make_client(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> Client:
    if args.max_retries < 0:
        raise UsageError("--max-retries must be >= 0")
    try:
        return Client(
            args.url,
            api_key=args.api_key,
            admin_key=args.admin_key,
            timeout=args.timeout,
            max_retries=args.max_retries,
            transport=transport,
        )
    except ValueError as exc:  # a URL or key that cannot be sent (see _config)
        raise UsageError(str(exc)) from None


# -- classify ----------------------------------------------------------------------------------


def run_classify(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """`classify`: stream JSON Lines, or collect and print a table on a terminal."""
    texts = _read_texts(args)
    as_json = args.json or not out.isatty()
    rows: list[tuple[str, bool, list[ClassifyResult]]] = []
    truncated = 0
    for batch in _chunks(texts, args.batch_size):
        results = client.classify(batch, tasks=args.tasks, raw_scores=args.raw_scores, truncate=args.truncate)
        cut = set(results.truncated_inputs)
        truncated += len(cut)
        for i, (text, answers) in enumerate(zip(batch, results)):
            if as_json:
                record: dict[str, Any] = {"input": text, "results": [_dump(a) for a in answers]}
                if i in cut:
                    record["truncated"] = True
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                rows.append((text, i in cut, answers))
        out.flush()
    if not as_json:
        _print_table(out, _classify_rows(rows, args.raw_scores))
    if truncated:
        print(f"{truncated} of {len(texts)} inputs were cut to the server's token limit "
              "(LPT_MAX_INPUT_TOKENS) before they were classified", file=sys.stderr)
    return EXIT_OK


def _read_texts(args: argparse.Namespace) -> list[str]:
    if args.file and args.texts:
        raise UsageError("give texts as arguments or with --file, not both")
    if args.file:
        try:
            with open(args.file, "rb") as f:
                lines = _utf8(f.read(), args.file).splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    elif args.texts and args.texts != ["-"]:
        return list(args.texts)
    else:
        if not args.texts and sys.stdin.isatty():
            raise UsageError("no texts: pass them as arguments, with --file, or on stdin")
        stdin = getattr(sys.stdin, "buffer", None)  # bytes, whatever the locale says
        lines = (sys.stdin.read() if stdin is None else _utf8(stdin.read(), "standard input")).splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise UsageError("no texts to classify")
    return texts


def _utf8(data: bytes, source: str) -> str:
    """Texts are UTF-8 (a byte-order mark is dropped); anything else is a usage error."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"{source} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} "
                         "(convert it, e.g. with iconv -t utf-8)") from None


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _classify_rows(
    rows: list[tuple[str, bool, list[ClassifyResult]]], raw_scores: bool
) -> list[list[str]]:
    header = ["INPUT", "TASK", "LABEL", "SCORE"] + (["SCORES"] if raw_scores else [])
    table = [header]
    for text, cut, answers in rows:
        shown = text if len(text) <= _TEXT_COLUMN else text[: _TEXT_COLUMN - 3] + "..."
        shown += " [truncated]" if cut else ""     # after shortening: the column must not hide it
        for i, answer in enumerate(answers):
            row = [shown if i == 0 else "", answer.task, answer.label, f"{answer.score:.4f}"]
            if raw_scores:
                scores = answer.scores or {}
                row.append(" ".join(f"{label}={score:.4f}" for label, score in scores.items()))
            table.append(row)
    return table


# -- adapters ----------------------------------------------------------------------------------


def run_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """`adapters list`."""
    adapters = client.list_adapters()
    if args.json:
        _print_json(out, [_dump(a) for a in adapters])
        return EXIT_OK
    table = [["NAME", "VERSION", "LABELS", "LAYER", "PROMPT", "SIZE", "RESIDENT"]]
    for a in adapters:
        table.append(
            [
                a.name,
                a.version[:12],
                ",".join(a.labels),
                str(a.layer),
                str(a.prompt_length),
                _size(a.size_bytes),
                "yes" if a.resident else "no",
            ]
        )
    _print_table(out, table)
    return EXIT_OK


def run_show(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """`adapters show NAME`."""
    adapter = client.get_adapter(args.name)
    if args.json:
        _print_json(out, _dump(adapter))
    else:
        _print_adapter(out, adapter)
    return EXIT_OK


def run_upload(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """`adapters upload NAME FILE`."""
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    result = client.upload_adapter(args.name, data=data)
    if args.json:
        _print_json(out, result.model_dump(mode="json", exclude_none=True))
        return EXIT_OK
    verb = "created" if result.created else "replaced"
    version = f" version {result.adapter.version[:12]}" if result.adapter else ""
    out.write(f"{verb} adapter {args.name}{version}\n")
    return EXIT_OK


def run_delete(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """`adapters delete NAME`."""
    client.delete_adapter(args.name)
    if args.json:
        _print_json(out, {"deleted": args.name})
    else:
        out.write(f"deleted adapter {args.name}\n")
    return EXIT_OK


# -- output ------------------------------------------------------------------------------------


def _dump(model: ClassifyResult | AdapterInfo) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


def _print_json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def _print_table(out: TextIO, rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")


def _print_adapter(out: TextIO, adapter: AdapterInfo) -> None:
    fields = _dump(adapter)
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        out.write(f"{key.ljust(width)}  {shown}\n")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
