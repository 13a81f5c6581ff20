"""An lpt app on a tiny random BERT, served by a real uvicorn in a thread of the test process:
for tests that need a real server and a fault only a test can inject."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))   # tiny_server, live_server

from live_server import serving as serve_app  # noqa: E402
from tiny import make_backbone  # noqa: E402
from tiny_server import tiny_app  # noqa: E402


@contextmanager
def serving(store: Path, bb=None, add_routes=None, **settings):
    """Yields (app, base URL, backbone) while uvicorn serves the app on a free port."""
    bb = bb or make_backbone("bert", lm_head=False)
    app = tiny_app(store, bb, **settings)
    if add_routes is not None:
        add_routes(app)
    with serve_app(app) as url:
        yield app, url, bb
