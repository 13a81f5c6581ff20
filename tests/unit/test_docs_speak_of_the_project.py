"""The user-facing files describe lpt-serve, not how it was built: no ticket numbers, no notes
about who works where, no paths that exist on one developer's machine."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ["README.md", "client/README.md", "Dockerfile", "docs/*.md", "bench/README.md", "bench/*.py",
           "bench/*.sh", "k8s/**/*", "docker/*", "scripts/*"]
WORDS = [r"\bissues?\b( note| \d+)?", r"\bsessions?\b", r"\b(not|was|be) drawn\b", r"\bshared folder\b",
         r"\bthe team'?s?\b", r"\byour (issue|note|report)\b",
         r"(?<![\w.])/(work|home/\w+|Users/\w+|mnt/\w+)/"]     # absolute paths of someone's machine
PATTERN = re.compile("|".join(WORDS), re.I)


def checked_files() -> list[Path]:
    files = sorted({p for pattern in CHECKED for p in ROOT.glob(pattern) if p.is_file()})
    assert len(files) > 20, files                     # the globs still find the project's files
    return files


def offending_lines(text: str) -> list[str]:
    return [f"{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if PATTERN.search(line)]


def test_project_files_speak_of_the_project_only():
    found = {str(p.relative_to(ROOT)): hits for p in checked_files()
             if (hits := offending_lines(p.read_text(encoding="utf-8", errors="replace")))}
    assert not found, found


@pytest.mark.parametrize("line", [
    "say why in your issue note", "The 3x target (issue 4) is missed", "for sessions with a GPU",
    "this one was not drawn either", "the original lives in the team's shared folder",
    "(default `/work/venvs/infinity/bin/infinity_emb`)", "cd /home/alice/lpt && make"])
def test_the_pattern_catches_work_process_words(line):
    assert offending_lines(line)


@pytest.mark.parametrize("line", [
    "tasks drawn from 8 of them", "the home team won the match", "/v1/adapters/{name}",
    "XDG_DATA_HOME/lpt-serve/adapters", "~/.local/share/lpt-serve/adapters", "./work/x"])
def test_the_pattern_leaves_project_words_alone(line):
    assert not offending_lines(line)
