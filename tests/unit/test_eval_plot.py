"""`lpt eval --plot`: a missing matplotlib is reported before any computing, and the metrics are
printed before the plot is drawn, so a failing plot never loses them."""
import sys

import pytest

from lpt import cli
from training_helpers import save_tiny_model, write_toy

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model dir, adapter file, test file) from a one-epoch `lpt train` on the tiny model."""
    d = tmp_path_factory.mktemp("eval-plot")
    model = str(save_tiny_model(d / "model"))
    argv = ["train", "--model", model, "--task", "toy", "--data", str(write_toy(d / "train.csv", 24)),
            "--dev", str(write_toy(d / "dev.csv", 8, seed=1)), "--out", str(d / "toy.safetensors"),
            "--epochs", "1", "--batch-size", "8", "--quiet"]
    assert cli.main(argv) == 0
    return model, str(d / "toy.safetensors"), str(write_toy(d / "test.csv", 10, seed=2))


def _eval(trained, *extra):
    model, adapter, test = trained
    return cli.main(["eval", "--adapter", adapter, "--data", test, "--model", model, *extra])


def test_missing_matplotlib_is_reported_before_the_model_loads(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # `import matplotlib` raises ImportError

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although the plot cannot be drawn")
    monkeypatch.setattr(cli, "_load_backbone", no_model)
    assert _eval(trained, "--plot", str(tmp_path / "cm.png")) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "pip install matplotlib" in err and "`plot` extra" in err, err
    assert not (tmp_path / "cm.png").exists()


def test_a_plot_folder_that_does_not_exist_is_reported_before_computing(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_backbone", lambda *a, **k: pytest.fail("computed before the check"))
    assert _eval(trained, "--plot", str(tmp_path / "no-such-dir" / "cm.png")) == 2
    assert "no-such-dir" in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [False, True])
def test_the_metrics_are_printed_even_when_the_plot_fails(trained, tmp_path, monkeypatch, capsys, as_json):
    import lpt.metrics

    def failing_plot(report, path, title=""):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(lpt.metrics, "plot_confusion", failing_plot)
    assert _eval(trained, "--plot", str(tmp_path / "cm.png"), *(["--json"] if as_json else [])) == 2
    out, err = capsys.readouterr()
    assert ('"accuracy"' if as_json else "accuracy") in out and "confusion" in out, out
    assert "the metrics are above, but the plot was not written" in err and "No space left" in err, err


def test_the_plot_is_written_after_the_metrics(trained, tmp_path, capsys):
    assert _eval(trained, "--plot", str(tmp_path / "cm.png")) == 0
    out, err = capsys.readouterr()
    assert "accuracy" in out and f"wrote {tmp_path / 'cm.png'}" in err
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
