"""An lpt app on a tiny random BERT, served by a real uvicorn (with lpt's HTTP protocol) in a
thread of the test process: for tests that need a real server and a fault only a test can inject."""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))   # tiny_server

from serve_process import free_port  # noqa: E402
from tiny import make_backbone  # noqa: E402
from tiny_server import tiny_app  # noqa: E402

from lpt_server.http import protocol_class  # noqa: E402


@contextmanager
def serving(store: Path, bb=None, add_routes=None, **settings):
    """Yields (app, base URL, backbone) while uvicorn serves the app on a free port."""
    bb = bb or make_backbone("bert", lm_head=False)
    app = tiny_app(store, bb, **settings)
    if add_routes is not None:
        add_routes(app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol_class(10.0),
                                           log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the threaded server did not start")
        time.sleep(0.05)
    try:
        yield app, f"http://127.0.0.1:{port}", bb
    finally:
        server.should_exit = True
        thread.join(30)
