"""The `lpt` command.

    lpt serve [--model minilm] [--port 8080] [--store DIR] [--no-demo-adapters] ...   this package
    lpt train ... | lpt eval ...                                                       lpt.cli
    lpt train --remote URL ...                                                         lpt_client.cli
    lpt classify ... | lpt adapters list|show|upload|delete ...                        lpt_client.cli

`serve` has one flag per setting (generated from Settings, so they cannot drift apart); a flag
given on the command line overrides the `LPT_*` environment variable of the same name.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import signal
import sys
import typing
from typing import Sequence

from .settings import Settings

DISPATCH = {"train": "lpt.cli", "eval": "lpt.cli", "classify": "lpt_client.cli", "adapters": "lpt_client.cli"}
log = logging.getLogger("lpt_server.cli")


def _flag_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str, list(typing.get_args(annotation))
    if args and typing.get_origin(annotation) is not None:     # Optional[X] / X | None
        return _flag_type(args[0])
    return annotation, None


def serve_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="lpt serve")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"LPT_{name.upper()}"
        typ, choices = _flag_type(field.annotation)
        help_ = f"{field.description} (env {env}; default {field.get_default(call_default_factory=True)})"
        if typ is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_)
        else:
            p.add_argument(flag, dest=name, type=typ if typ in (int, float) else str, choices=choices,
                           default=argparse.SUPPRESS, metavar=name.upper() if not choices else None, help=help_)
    return p


def settings_from_args(argv: Sequence[str]) -> Settings:
    """Flags given on the command line win; the rest come from LPT_* env vars, then defaults."""
    args = serve_parser().parse_args(list(argv))
    return Settings(**vars(args))


def stop_seconds(settings: Settings) -> int:
    """The most a SIGTERM'd server takes to exit: the drain, then a training job's child
    stopping (killed past CANCEL_GRACE_S). The grace periods of k8s/base/deployment.yaml and
    docker/compose.yaml cover it (tests check)."""
    from .train_jobs import CANCEL_GRACE_S

    return settings.drain_seconds + math.ceil(CANCEL_GRACE_S)


def serve(argv: Sequence[str]) -> int:
    import uvicorn
    from pydantic import ValidationError

    from .app import create_app
    from .http import protocol_class
    from .logging import configure

    try:
        settings = settings_from_args(argv)
    except ValidationError as e:
        print(f"lpt serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    configure(settings.log_format, settings.log_level)
    # The engine thread re-takes the GIL after every torch op; with the default 5 ms switch
    # interval it can wait that long each time the event loop is busy parsing requests.
    # (measured: +5% throughput under load on 2 cores). Process-wide, so set here, not in create_app.
    sys.setswitchinterval(0.001)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            http=protocol_class(settings.header_timeout_s),
                            log_level=settings.log_level, access_log=True, lifespan="on",
                            timeout_graceful_shutdown=settings.drain_seconds)
    server = uvicorn.Server(config)

    def on_signal(sig, frame):
        # /ready turns 503 at once so a load balancer stops sending; uvicorn then stops
        # accepting, lets in-flight requests finish and runs the lifespan shutdown (batcher
        # drain). Unlike uvicorn's own handler this does not re-raise the signal after shutdown,
        # so a clean drain exits 0. A second SIGINT (Ctrl-C twice) still forces the exit.
        app.state.runtime.draining = True
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True
        log.info("signal %s: draining in-flight requests, then exiting", signal.Signals(sig).name)

    def on_fatal(why: str):
        # the engine worker or the batcher died: drain what can still be answered and exit 1, so
        # that the supervisor starts a fresh server (a restart policy, Kubernetes)
        app.state.runtime.draining = True
        server.should_exit = True

    server.handle_exit = on_signal          # uvicorn installs self.handle_exit as the signal handler
    app.state.runtime.on_fatal = on_fatal
    server.run()
    if not server.started or app.state.runtime.fatal:   # startup failed (model or store), or serving did
        return 1
    return 0


def _remote(argv: Sequence[str]) -> bool:
    """`lpt train --remote URL ...`: the training runs on a server (the client's `train`)."""
    return any(a == "--remote" or a.startswith("--remote=") for a in argv)


def _dispatch(command: str, argv: Sequence[str]) -> int:
    module = "lpt_client.cli" if command == "train" and _remote(argv) else DISPATCH[command]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        print(f"lpt {command}: this command needs {module}, which cannot be imported here ({e}). "
              "Install the full lpt-serve package (scripts/install.sh).", file=sys.stderr)
        return 2
    if module == "lpt_client.cli":      # the client also ships alone as `lpt-client`: name it `lpt` here
        return int(mod.main([command, *argv], prog="lpt") or 0)
    return int(mod.main([command, *argv]) or 0)


USAGE = """usage: lpt COMMAND [ARGS]

commands:
  serve      run the HTTP server (lpt serve --help lists every setting)
  train      train an adapter (--remote URL: as a job on a server)
  eval       evaluate an adapter
  classify   classify texts through a running server
  adapters   list | show | upload | delete adapters on a running server
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        return serve(rest)
    if command in DISPATCH:
        return _dispatch(command, rest)
    print(f"lpt: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
