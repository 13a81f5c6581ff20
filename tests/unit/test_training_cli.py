"""`lpt train` / `lpt eval` on a tiny model saved to disk: bad input fails clearly, writes nothing."""
import json

import pytest

from lpt import read_adapter
from lpt.cli import main
from lpt.data import DataError, read_examples
from training_helpers import save_tiny_model, toy_examples, write_rows, write_toy

pytestmark = pytest.mark.unit



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture
def files(tmp_path):
    return {"train": write_toy(tmp_path / "train.csv", 24), "dev": write_toy(tmp_path / "dev.csv", 8, seed=1),
            "test": write_toy(tmp_path / "test.csv", 10, seed=2)}


def _train(model_dir, tmp_path, *extra, data=None, out="out.safetensors"):
    argv = ["train", "--model", model_dir, "--task", "toy", "--data", str(data), "--out", str(tmp_path / out),
            "--epochs", "1", "--batch-size", "8", "--quiet", *extra]
    return main(argv)


def test_train_then_eval(model_dir, files, tmp_path, capsys):
    metrics = tmp_path / "m.json"
    rc = _train(model_dir, tmp_path, "--dev", str(files["dev"]), "--test", str(files["test"]),
                "--epochs", "3", "--pooling", "mean", "--layer", "1", "--prompt-length", "4",
                "--metrics-json", str(metrics), data=files["train"])
    assert rc == 0
    adapter = tmp_path / "out.safetensors"
    cfg = read_adapter(adapter).config
    assert (cfg.task, cfg.labels, cfg.layer, cfg.prompt_length, cfg.pooling) == ("toy", ["neg", "pos"], 1, 4, "mean")
    summary = json.loads(metrics.read_text())
    assert summary["best_epoch"] in (1, 2, 3) and len(summary["history"]) == 3
    assert summary["cached_states"] is True
    capsys.readouterr()

    rc = main(["eval", "--adapter", str(adapter), "--data", str(files["test"]), "--model", model_dir,
               "--plot", str(tmp_path / "cm.png")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "accuracy" in out and "macro-F1" in out and "confusion matrix" in out
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"

    rc = main(["eval", "--adapter", str(adapter), "--data", str(files["test"]), "--model", model_dir, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["examples"] == 10
    assert set(report["per_class"]) == {"neg", "pos"}
    assert sum(map(sum, report["confusion_matrix"])) == 10
    # the serving engine (eval) and the training code (train --test) agree exactly
    assert report["accuracy"] == summary["test"]["accuracy"]
    assert report["confusion_matrix"] == summary["test"]["confusion_matrix"]


def test_eval_text_output_on_a_known_case(model_dir, files, tmp_path, capsys):
    assert _train(model_dir, tmp_path, "--dev", str(files["dev"]), data=files["train"]) == 0
    one_label = write_rows(tmp_path / "neg.csv", [{"text": "bad movie", "label": "neg"}] * 3)
    capsys.readouterr()
    assert main(["eval", "--adapter", str(tmp_path / "out.safetensors"), "--data", str(one_label),
                 "--model", model_dir]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "examples  3" in lines
    neg_row = next(line for line in lines[lines.index("confusion matrix (rows: true label, columns: predicted)"):]
                   if line.startswith("neg"))
    assert sum(int(x) for x in neg_row.split()[1:]) == 3     # all 3 rows counted under true label neg


def test_no_dev_holds_out_part_of_train(model_dir, tmp_path, capsys):
    data = write_toy(tmp_path / "train.jsonl", 40)
    metrics = tmp_path / "m.json"
    assert _train(model_dir, tmp_path, "--metrics-json", str(metrics), data=data) == 0
    s = json.loads(metrics.read_text())
    assert (s["train_examples"], s["dev_examples"]) == (36, 4)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_formats_read_the_same(tmp_path, fmt):
    rows = [{"t": "a, \"quoted\"\ttext", "y": "pos", "p": "second"}, {"t": "b", "y": "neg", "p": ""}]
    path = write_rows(tmp_path / f"d.{fmt}", rows)
    ex = read_examples(path, "t", "y", "p")
    assert [(e.text, e.label, e.text_pair) for e in ex] == [("a, \"quoted\"\ttext", "pos", "second"), ("b", "neg", "")]
    assert [e.line for e in ex] == [2, 3] if fmt != "jsonl" else [1, 2]


# ---- bad input: exit code 2, a message that says what and where, no output file -------------------
def _bad_train(tmp_path, capsys, model_dir, data, *extra):
    out = tmp_path / "never.safetensors"
    rc = main(["train", "--model", model_dir, "--task", "toy", "--data", str(data), "--out", str(out),
               "--epochs", "1", "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".never*"))
    return err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_a_usage_error(model_dir, files, tmp_path, capsys):
    """torch asserts ("Torch not compiled with CUDA enabled"): a traceback and exit 1, before."""
    err = _bad_train(tmp_path, capsys, model_dir, files["train"], "--device", "cuda")
    assert "--device cuda: this torch sees no CUDA device" in err and "Traceback" not in err, err


def test_missing_column(model_dir, files, tmp_path, capsys):
    err = _bad_train(tmp_path, capsys, model_dir, files["train"], "--text-column", "sentence")
    assert "train.csv has no column 'sentence'" in err and "'text', 'label'" in err and "--text-column" in err


def test_missing_label_column_in_jsonl_names_the_line(model_dir, tmp_path, capsys):
    data = write_rows(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])
    err = _bad_train(tmp_path, capsys, model_dir, data)
    assert "d.jsonl line 2 has no key 'label'" in err and "--label-column" in err


def test_one_class_only(model_dir, tmp_path, capsys):
    data = write_rows(tmp_path / "one.csv", [{"text": f"t{i}", "label": "pos"} for i in range(30)])
    err = _bad_train(tmp_path, capsys, model_dir, data)
    assert "one.csv" in err and "'pos'" in err and "at least 2 labels" in err


def test_unknown_label_in_dev(model_dir, files, tmp_path, capsys):
    dev = write_rows(tmp_path / "dev2.csv", [{"text": "a", "label": "neg"}, {"text": "b", "label": "neutral"}])
    err = _bad_train(tmp_path, capsys, model_dir, files["train"], "--dev", str(dev))
    assert "dev2.csv line 3" in err and "'neutral'" in err and "neg, pos" in err


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"text,label\n"], ids=["empty", "blank", "header-only"])
def test_empty_file(model_dir, tmp_path, capsys, content):
    data = tmp_path / "empty.csv"
    data.write_bytes(content)
    err = _bad_train(tmp_path, capsys, model_dir, data)
    assert "empty.csv" in err and ("is empty" in err or "no rows" in err)


def test_non_utf8_names_file_and_line(model_dir, tmp_path, capsys):
    data = tmp_path / "latin.csv"
    data.write_bytes("text,label\ngood,pos\nbad,neg\ncaf\u00e9,pos\n".encode("latin-1"))
    err = _bad_train(tmp_path, capsys, model_dir, data)
    assert "latin.csv line 4" in err and "UTF-8" in err and "0xe9" in err


def test_empty_label_and_short_row(model_dir, tmp_path, capsys):
    data = tmp_path / "short.csv"
    data.write_text("text,label\ngood,pos\nbad,\n")
    assert "short.csv line 3: empty label" in _bad_train(tmp_path, capsys, model_dir, data)
    data.write_text("text,label\ngood,pos\nbad\n")
    assert "short.csv line 3: no value for column 'label'" in _bad_train(tmp_path, capsys, model_dir, data)


def test_bad_flags(model_dir, files, tmp_path, capsys):
    err = _bad_train(tmp_path, capsys, model_dir, files["train"], "--label-words", "bad")
    assert "--label-words has 1 words for 2 labels" in err
    err = _bad_train(tmp_path, capsys, model_dir, files["train"], "--method", "probe")
    assert "--method probe writes no adapter file" in err
    err = _bad_train(tmp_path, capsys, model_dir, files["train"], "--layer", "9")
    assert "layer (k) is 9, the model has 4 layers" in err
    err = _bad_train(tmp_path, capsys, model_dir, files["train"], "--template", "no slot")
    assert "template must contain {text}" in err
    err = _bad_train(tmp_path, capsys, model_dir, files["train"], "--dev", str(tmp_path / "nope.csv"))
    assert "nope.csv: no such file" in err
    data = tmp_path / "train.txt"
    data.write_text("text,label\na,b\n")
    assert "--format" in _bad_train(tmp_path, capsys, model_dir, data)


def test_int8_evaluates_a_float32_adapter_and_refuses_to_train(model_dir, files, tmp_path, capsys):
    err = _bad_train(tmp_path, capsys, model_dir, files["train"], "--dtype", "int8")
    assert "--dtype int8 serves and evaluates only" in err and not (tmp_path / "out.safetensors").exists()
    assert _train(model_dir, tmp_path, "--dev", str(files["dev"]), data=files["train"]) == 0
    capsys.readouterr()
    reports = {}
    for dtype in ("float32", "int8"):
        assert main(["eval", "--adapter", str(tmp_path / "out.safetensors"), "--data", str(files["test"]),
                     "--model", model_dir, "--dtype", dtype, "--json"]) == 0
        reports[dtype] = json.loads(capsys.readouterr().out)
    assert reports["int8"]["examples"] == reports["float32"]["examples"] == 10


def test_eval_bad_inputs(model_dir, files, tmp_path, capsys):
    assert _train(model_dir, tmp_path, "--dev", str(files["dev"]), data=files["train"]) == 0
    adapter = str(tmp_path / "out.safetensors")
    unknown = write_rows(tmp_path / "t.csv", [{"text": "a", "label": "neutral"}])
    capsys.readouterr()
    assert main(["eval", "--adapter", adapter, "--data", str(unknown), "--model", model_dir]) == 2
    assert "t.csv line 2: label 'neutral'" in capsys.readouterr().err
    not_adapter = tmp_path / "x.safetensors"
    not_adapter.write_bytes(b"garbage")
    assert main(["eval", "--adapter", str(not_adapter), "--data", str(files["test"]), "--model", model_dir]) == 2
    assert "not a usable adapter" in capsys.readouterr().err


def test_read_examples_errors_are_data_errors(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"text": "a", "label": "b"}\nnot json\n')
    with pytest.raises(DataError, match="x.jsonl line 2: the line is not valid JSON"):
        read_examples(bad)
    assert len(toy_examples(4)) == 4


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_a_field_longer_than_csvs_default_limit_is_read_whole(tmp_path, fmt):
    """csv refuses a field over 131,072 characters by default (a 500 on the server, before): a
    long document is a text like any other."""
    sep = "," if fmt == "csv" else "\t"
    long_text = "word " * 40_000                                   # 200,000 characters
    path = tmp_path / f"long.{fmt}"
    path.write_text(f"text{sep}label\n\"{long_text}\"{sep}pos\nshort{sep}neg\n")
    assert [(len(e.text), e.label) for e in read_examples(path)] == [(len(long_text), "pos"), (5, "neg")]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_renders(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "--data" in capsys.readouterr().out


def test_classification_report_numbers():
    from lpt.metrics import classification_report, format_report

    # true:  a a a b b c ; predicted: a a b b c c
    r = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert r["per_class"]["b"]["precision"] == pytest.approx(0.5) and r["per_class"]["c"]["recall"] == 1.0
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    text = format_report(r)
    assert "accuracy  0.6667" in text and text.splitlines()[-1].split() == ["c", "0", "0", "1"]


@pytest.mark.parametrize("option, value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"), ("--lr", "0"), ("--lr", "1e999"), ("--head-lr", "-0.1"),
    ("--weight-decay", "nan"), ("--weight-decay", "-1"), ("--warmup", "2"), ("--warmup", "-0.1"),
    ("--epochs", "0"), ("--epochs", "99999999999999999999999"), ("--seed", "999999999999999999999"),
    ("--seed", "-1"), ("--batch-size", "0"), ("--prompt-length", "0"), ("--max-length", "-5"),
    ("--cache-budget-mb", "nan"),
])
def test_options_that_cannot_train_are_refused_before_anything_runs(option, value):
    """Each used to start a run that failed late, overflowed, never ended, or (lr=-1) stored a
    degraded adapter."""
    from lpt.cli import UsageError, parse_train_args, plan_training

    with pytest.raises(UsageError, match=f"^{option} must be "):      # before the data file is read
        plan_training(parse_train_args(["--task", "t", "--data", "no-such.csv", f"{option}={value}"]))


def test_sound_options_at_their_bounds_pass_the_check():
    from lpt.cli import check_bounds, parse_train_args

    check_bounds(parse_train_args(["--task", "t", "--data", "d.csv", "--lr=1e-9", "--warmup=0", "--weight-decay=0",
                                   "--epochs=1", "--seed=0", "--batch-size=1", "--cache-budget-mb=0", "--warmup=1"]))
