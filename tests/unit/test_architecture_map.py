"""docs/ARCHITECTURE.md is a map of the code as it is: every module has its row under its
package's heading (and no row names a module that is gone), and every hand-off type it shows
as `Name(field, ...)` has exactly those fields, in that order."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from lpt.adapter import AdapterFile
from lpt.encoding import Encoded
from lpt.engine import Prediction, Row
from lpt.forward import Group
from lpt_server.batcher import Item
from lpt_server.registry import Entry
from lpt_server.routes.classify import Job
from lpt_server.store import Stored
from lpt_server.texts import EncodedInputs

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = ["adapters/lpt", "server/lpt_server", "server/lpt_server/routes", "client/lpt_client"]
# the types handed from stage to stage, each shown at least once on the map
HAND_OFFS = {c.__name__: c for c in (Row, Prediction, Group, Encoded, Item, EncodedInputs, Job,
                                     AdapterFile, Stored, Entry)}


def listed_modules(text: str, package: str) -> set[str]:
    """The `*.py` names in the first column of the table under the heading `### <package>/`."""
    section = re.search(rf"^### {re.escape(package)}/(?:[ \t][^\n]*)?\n(.*?)(?=^#|\Z)", text, re.M | re.S)
    assert section is not None, f"docs/ARCHITECTURE.md has no '### {package}/' heading"
    return set(re.findall(r"^\| `(\w+\.py)` \|", section.group(1), re.M))


def shown_signatures(text: str) -> list[tuple[str, list[str]]]:
    """Every `Name(a, b, ...)` of a hand-off type in the text -> (Name, [a, b, ...])."""
    pattern = re.compile(r"\b(" + "|".join(HAND_OFFS) + r")\(([^()]*)\)")
    return [(m.group(1), [a.strip() for a in m.group(2).split(",")]) for m in pattern.finditer(text)]


def public_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_on_the_map(package):
    actual = {p.name for p in (ROOT / package).glob("*.py")}
    listed = listed_modules(DOC.read_text(encoding="utf-8"), package)
    assert not actual - listed, f"modules of {package}/ missing from docs/ARCHITECTURE.md: {sorted(actual - listed)}"
    assert not listed - actual, f"docs/ARCHITECTURE.md lists modules {package}/ no longer has: {sorted(listed - actual)}"


def test_signatures_on_the_map_match_the_dataclasses():
    shown = shown_signatures(DOC.read_text(encoding="utf-8"))
    assert set(HAND_OFFS) <= {name for name, _ in shown}, \
        f"hand-off types not shown as Name(fields): {sorted(set(HAND_OFFS) - {n for n, _ in shown})}"
    wrong = [f"{name}({', '.join(args)}) but the code has {name}({', '.join(public_fields(HAND_OFFS[name]))})"
             for name, args in shown if args != public_fields(HAND_OFFS[name])]
    assert not wrong, wrong


def test_the_parsers_see_what_they_should():
    text = ("### adapters/lpt/ (x)\n\n| module | job |\n| --- | --- |\n| `a.py` | one |\n| `b.py` | two |\n\n"
            "### adapters/lpt/routes/\n\n| `c.py` | three |\n## next\n"
            "then `Row(adapter, text)` and `lpt.Group(adapter,\n  states)` but not Rows(x) or list[Row]")
    assert listed_modules(text, "adapters/lpt") == {"a.py", "b.py"}
    assert listed_modules(text, "adapters/lpt/routes") == {"c.py"}
    assert shown_signatures(text) == [("Row", ["adapter", "text"]), ("Group", ["adapter", "states"])]
