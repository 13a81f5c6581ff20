"""The adapter's configuration: everything but the tensors, stored as JSON in the file header.

`FIELDS` is its schema: every field with its type, bounds and allowed values. A config from a
file is checked against it before anything is built from it, so no value (a bool for a layer,
a bottleneck of 10^15, a list for a template) reaches the code that allocates tensors.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields

from .generators import GENERATOR_KINDS
from .heads import HEAD_KINDS, POOLINGS
from .schema import Choice, FiniteNumber, Int, List, Nullable, Number, Object, Spec, Text, check, load_json

FORMAT = "lpt-adapter/1"


@dataclass
class AdapterConfig:
    """One task adapter. `layer` is k (the prompt enters after layer k), `prompt_length` L.

    head_kind:
      - "linear": a trained Linear(d, C) on the pooled final states (backbones without an LM head);
      - "mlm": template with {mask}, the frozen MLM head scored at the label words;
      - "lm": decoder; the frozen next-token head at the last real token scored at the label words.
    """

    task: str
    labels: list[str]
    layer: int
    prompt_length: int = 5
    generator: str = "npg"
    bottleneck: int = 128
    dropout: float = 0.1
    head_kind: str = "linear"
    pooling: str = "cls"
    template: str | None = None
    label_words: list[str] | None = None
    max_length: int = 256
    base_model: dict = field(default_factory=dict)   # id + Backbone.fingerprint()
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: object) -> tuple["AdapterConfig | None", list[str]]:
        """Parse, collecting every problem instead of stopping at the first."""
        if not isinstance(text, str):
            return None, [f"lpt.config must be a JSON text, got a {type(text).__name__}"]
        raw, why = load_json(text, "lpt.config")
        if why:
            return None, [why]
        if not isinstance(raw, dict):
            return None, ["lpt.config must be a JSON object"]
        problems = check(FIELDS, raw, REQUIRED, where="config")
        if problems:
            return None, problems
        cfg = cls(**raw)
        return cfg, cfg._relation_problems()

    def problems(self) -> list[str]:
        """Checks that need no backbone: the schema, then how fields relate."""
        return check(FIELDS, asdict(self), where="config") or self._relation_problems()

    def _relation_problems(self) -> list[str]:
        p = []
        if self.head_kind in ("mlm", "lm") and (self.label_words is None or len(self.label_words) != len(self.labels)):
            p.append(f"an {self.head_kind} head needs one label word per label")
        if self.head_kind == "mlm" and (self.template is None or "{mask}" not in self.template):
            p.append("an mlm head needs a template containing {mask}")
        if self.template is not None and "{text}" not in self.template:
            p.append("template must contain {text}")
        return p


# ---- the schema ------------------------------------------------------------------------------
# Bounds are far above any real adapter and low enough that nothing built from a config can be
# large: the tensors' size is further tied to the file size (see lpt.adapter).
MAX_LABELS = 1000
MAX_LABEL_CHARS = 200
MAX_TEXT_CHARS = 2000      # task, template

FINGERPRINT = Object({
    "id": Text(500),
    "model_type": Text(64),
    "hidden_size": Int(1, 65536),
    "num_layers": Int(1, 1024),
    "vocab_size": Int(1, 10_000_000),
    "weights_sample": List(FiniteNumber(), 1, 256),
    "weights_sha256": Text(64),
}, required=("model_type", "hidden_size", "num_layers", "vocab_size", "weights_sample"))

FIELDS: dict[str, Spec] = {
    "task": Text(MAX_TEXT_CHARS),
    "labels": List(Text(MAX_LABEL_CHARS), 2, MAX_LABELS, distinct=True),
    "layer": Int(0, 1023),
    "prompt_length": Int(1, 256),
    "generator": Choice(GENERATOR_KINDS),
    "bottleneck": Int(1, 4096),
    "dropout": Number(0, 1),
    "head_kind": Choice(HEAD_KINDS),
    "pooling": Choice(POOLINGS),
    "template": Nullable(Text(MAX_TEXT_CHARS)),
    "label_words": Nullable(List(Text(MAX_LABEL_CHARS), 2, MAX_LABELS)),
    "max_length": Int(8, 1 << 20),
    "base_model": FINGERPRINT,
    "format": Choice((FORMAT,)),
}
# a file must also say which base model it was trained on (the dataclass default {} is only
# there so that new_adapter can fill it in)
REQUIRED = tuple(f.name for f in fields(AdapterConfig)
                 if f.default is MISSING and f.default_factory is MISSING) + ("base_model",)
assert set(FIELDS) == {f.name for f in fields(AdapterConfig)}, "every config field has one rule"
