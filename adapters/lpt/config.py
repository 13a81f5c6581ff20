"""The adapter's configuration: everything but the tensors, stored as JSON in the file header."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

FORMAT = "lpt-adapter/1"
HEAD_KINDS = ("linear", "mlm", "lm")
POOLINGS = ("cls", "mean", "last")


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
    def from_json(cls, text: str) -> tuple["AdapterConfig | None", list[str]]:
        """Parse, collecting every problem instead of stopping at the first."""
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            return None, [f"lpt.config is not valid JSON: {e}"]
        if not isinstance(raw, dict):
            return None, ["lpt.config must be a JSON object"]
        known = {f.name for f in fields(cls)}
        problems = [f"unknown config key {k!r}" for k in raw if k not in known]
        missing = [k for k in ("task", "labels", "layer") if k not in raw]
        problems += [f"config is missing {k!r}" for k in missing]
        if problems:
            return None, problems
        cfg = cls(**raw)
        return cfg, cfg.problems()

    def problems(self) -> list[str]:
        """Checks that need no backbone."""
        p = []
        if self.format != FORMAT:
            p.append(f"format is {self.format!r}, this server reads {FORMAT!r}")
        if not isinstance(self.labels, list) or len(self.labels) < 2 or not all(isinstance(x, str) for x in self.labels):
            p.append("labels must be a list of at least 2 strings")
        elif len(set(self.labels)) != len(self.labels):
            p.append("labels must be distinct")
        if not isinstance(self.layer, int) or self.layer < 0:
            p.append(f"layer must be an integer >= 0, got {self.layer!r}")
        if not isinstance(self.prompt_length, int) or not 1 <= self.prompt_length <= 256:
            p.append(f"prompt_length must be an integer in [1, 256], got {self.prompt_length!r}")
        if self.generator not in ("npg", "max", "avg", "static"):
            p.append(f"generator must be npg, max, avg or static, got {self.generator!r}")
        if not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            p.append(f"bottleneck must be a positive integer, got {self.bottleneck!r}")
        if self.head_kind not in HEAD_KINDS:
            p.append(f"head_kind must be one of {HEAD_KINDS}, got {self.head_kind!r}")
        if self.pooling not in POOLINGS:
            p.append(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.head_kind in ("mlm", "lm"):
            if not self.label_words or len(self.label_words) != len(self.labels or []):
                p.append("an mlm/lm head needs one label word per label")
        if self.head_kind == "mlm" and (not self.template or "{mask}" not in self.template):
            p.append("an mlm head needs a template containing {mask}")
        if self.template is not None and "{text}" not in self.template:
            p.append("template must contain {text}")
        if not isinstance(self.max_length, int) or self.max_length < 8:
            p.append(f"max_length must be an integer >= 8, got {self.max_length!r}")
        return p
