"""`lpt serve` whose engine answers at once: the model's forward is replaced, everything else
(HTTP, JSON, tokenizing, the batcher, the engine worker, the responses) is the real server.

    python bench/instant_serve.py serve --model minilm ...     # the same arguments as `lpt serve`

Used by bench/server_ceiling.py to measure what the server itself costs per request. Every row
gets its adapter's first label with uniform scores.
"""
from __future__ import annotations

import sys

import lpt_server.runtime as runtime
from lpt import Engine, Prediction
from lpt_server.cli import main


class InstantEngine(Engine):
    def predict(self, rows):
        return [Prediction(r.adapter.labels[0], 1.0 / len(r.adapter.labels),
                           {label: 1.0 / len(r.adapter.labels) for label in r.adapter.labels}) for r in rows]


runtime.engine_for = lambda backbone, settings: InstantEngine(backbone, cache_entries=0)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
