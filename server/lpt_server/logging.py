"""Log setup: plain text for people, one JSON object per line for log collectors.

    configure("json", "info")

A line made while a request is handled carries its id (`request_id`, see request_id.py).
Everything goes through the root logger (uvicorn's loggers included: `lpt serve` runs
uvicorn with log_config=None so they propagate), so one format covers the whole process.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from .request_id import RequestIdFilter

# LogRecord's own attributes; uvicorn adds color_message (the message with ANSI colours)
_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for k, v in vars(record).items():       # fields passed with extra={...}
            if k not in _STD and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """TEXT, and the request's id at the end of a line made while a request is handled."""

    def formatMessage(self, record: logging.LogRecord) -> str:     # the line before any traceback
        line = super().formatMessage(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [request {rid}]" if rid else line


def configure(log_format: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # httpx logs every request at info: an s3:// store's pointer checks and pings would flood the log
    # (the store logs its own failures); --log-level debug still shows them
    logging.getLogger("httpx").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
