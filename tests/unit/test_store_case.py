"""The directory store on a volume that does not tell names apart by case (macOS, Windows, Docker
Desktop's bind mounts): a real exFAT filesystem, case-insensitive and case-preserving like those.
Names stay case-sensitive: "SENTiment" must not open, replace or delete "sentiment"."""
import pytest

from lpt_server.store import Store
from lpt_server.store_layout import NameTaken
from store_files import tree

pytestmark = pytest.mark.unit


def test_the_store_knows_whether_its_volume_folds_case(folding_volume, tmp_path):
    assert Store(folding_volume / "store").case_insensitive
    assert not Store(tmp_path / "plain").case_insensitive


def test_a_name_differing_only_in_case_is_another_name(folding_volume):
    store = Store(folding_volume / "store")
    v = store.put("sentiment", b"weights of sentiment").version
    before = tree(folding_volume / "store")

    for other in ("SENTiment", "Sentiment", "SENTIMENT"):
        assert store.current(other) is None                       # not found: no copy loaded under it
        with pytest.raises(FileNotFoundError):
            store.read(other, v)
        with pytest.raises(NameTaken, match="'sentiment'") as err:
            store.put(other, b"weights of another task")           # would overwrite "sentiment"
        assert "case" in str(err.value)
        assert store.delete(other) is False                       # would delete "sentiment"
        assert store.sweep(grace_s=0) == []
    assert tree(folding_volume / "store") == before
    assert store.current("sentiment") == v and store.read("sentiment", v) == b"weights of sentiment"
    assert store.names() == ["sentiment"] and store.versions() == {"sentiment": v}

    v2 = store.put("sentiment", b"new weights").version           # its own name still works
    assert store.current("sentiment") == v2
    assert store.delete("sentiment") is True
    assert store.put("SENTIMENT", b"weights of SENTIMENT").created    # free again: any spelling
    assert store.names() == ["SENTIMENT"] and store.current("sentiment") is None


def test_spellings_of_one_name_share_its_writers_lock(folding_volume):
    """Writers of "tasky" and "TASKY" would write the same folder there: they must exclude each other."""
    store = Store(folding_volume / "store")
    store.put("tasky", b"v1")
    with store._locked("tasky") as held:
        assert held
        for other in ("TASKY", "Tasky"):
            with store._locked(other, wait=False) as also:
                assert not also
    with store._locked("TASKY", wait=False) as held:
        assert held
    assert store.current("tasky") is not None and store.sweep(grace_s=0) == []
