"""The fenced code blocks of the project's Markdown files, for the tests that run or check them.

A plain module with a unique name in tests/ (on the path of every test folder), not conftest.py:
`from conftest import ...` resolves to whichever conftest pytest imported last.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLIENT_README = ROOT / "client" / "README.md"
DEMO_ADAPTERS = ROOT / "server" / "lpt_server" / "demo_adapters"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    lang: str       # "bash", "python", "" ...
    code: str
    section: str    # the "## " heading above it
    where: str      # "README.md:123", for messages


def blocks(path: Path = README, lang: str | None = None) -> list[Block]:
    """Every fenced block of `path` in order (only those in `lang` if given)."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        if lang is not None and m.group(1) != lang:
            continue
        headings = re.findall(r"^## (.+)$", text[:m.start()], re.M)
        line = text.count("\n", 0, m.start()) + 1
        out.append(Block(m.group(1), m.group(2), headings[-1] if headings else "",
                         f"{path.relative_to(ROOT)}:{line}"))
    return out


def demo_adapter_names() -> set[str]:
    return {p.stem for p in DEMO_ADAPTERS.glob("*.safetensors")}
