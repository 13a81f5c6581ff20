"""An app served over real HTTP by uvicorn in a thread of this process, for tests that need a URL
(the READMEs' examples, curl, the CLI). A plain module with a unique name (see tiny_server.py)."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from lpt_server.http import protocol_class


@contextmanager
def serving(app) -> Iterator[str]:
    """`app` served by uvicorn on a free port in this process, lifespan included, with the HTTP
    protocol `lpt serve` runs (its header deadline); yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", http=protocol_class(10.0)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:                     # uvicorn installs no signal handlers off the main thread
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
