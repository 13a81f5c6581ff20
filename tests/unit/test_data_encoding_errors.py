"""Files that are not all UTF-8: the message counts and names the bad lines and suggests only what is
correct for the file (no whole-file re-encoding when other lines are valid UTF-8); --encoding-errors
skip|replace reads them anyway."""
import pytest

from lpt.cli import main
from lpt.data import DataError, read_examples
from training_helpers import save_tiny_model, toy_examples

pytestmark = pytest.mark.unit

GOOD = "café crème was great"                       # valid UTF-8, not ASCII: must survive untouched
BAD = "bad \u00e9clair".encode("latin-1")             # 0xe9 alone: not UTF-8


def mixed_csv(path, bad_rows=(3, 5)):
    """A header and 6 rows (file lines 2..7); the rows at the file lines in `bad_rows` are Latin-1."""
    lines = [b"text,label"]
    for line in range(2, 8):
        text = BAD if line in bad_rows else (GOOD.encode() if line == 2 else f"plain {line}".encode())
        lines.append(text + (b",neg" if line % 2 else b",pos"))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def error_for(path, **kw) -> str:
    with pytest.raises(DataError) as e:
        read_examples(path, flag_prefix="--", **kw)
    return str(e.value)


def test_a_mixed_file_names_the_bad_lines_and_does_not_suggest_reencoding_it(tmp_path):
    msg = error_for(mixed_csv(tmp_path / "mixed.csv"))
    assert "mixed.csv line 3: not valid UTF-8 (byte 0xe9 at column 5)" in msg, msg
    assert "2 of 7 lines are not valid UTF-8 (lines 3, 5)" in msg, msg
    assert "iconv" not in msg and "mixes encodings" in msg, msg
    assert "--encoding-errors skip" in msg and "--encoding-errors replace" in msg, msg


def test_many_bad_lines_show_the_first_few(tmp_path):
    rows = [b"text,label"] + [b"\xff row,pos"] * 8 + [b"ok,neg"]
    (tmp_path / "many.csv").write_bytes(b"\n".join(rows))
    assert "8 of 10 lines are not valid UTF-8 (lines 2, 3, 4, 5, 6, ...)" in error_for(tmp_path / "many.csv")


def test_a_file_wholly_in_latin1_gets_the_conversion_that_fixes_it(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncafé,pos\nthé,neg\n".encode("latin-1"))
    msg = error_for(path)
    assert "`iconv -f latin1 -t utf-8" in msg and "--encoding-errors skip" in msg, msg
    # what that command does, done here: the converted file reads back with its accents right
    fixed = tmp_path / "latin-utf8.csv"
    fixed.write_text(path.read_bytes().decode("latin-1"), encoding="utf-8")
    assert [e.text for e in read_examples(fixed)] == ["café", "thé"]


def test_skip_leaves_out_the_bad_rows_and_says_which(tmp_path):
    notes = []
    rows = read_examples(mixed_csv(tmp_path / "mixed.csv"), encoding_errors="skip", log=notes.append)
    assert [(e.line, e.text) for e in rows] == [(2, GOOD), (4, "plain 4"), (6, "plain 6"), (7, "plain 7")]
    assert notes == [f"{tmp_path / 'mixed.csv'}: skipped 2 rows that are not valid UTF-8 (lines 3, 5)"]


def test_skip_drops_a_whole_multiline_record_and_keeps_the_line_numbers(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_bytes(b'text,label\n"first\nline \xe9",pos\nafter,neg\n')
    with pytest.raises(DataError):          # strict (default) refuses, as before
        read_examples(path)
    rows = read_examples(path, encoding_errors="skip")
    assert [(e.line, e.text) for e in rows] == [(4, "after")]


def test_skip_keeps_rows_whose_bad_bytes_are_in_a_column_not_read(tmp_path):
    path = tmp_path / "extra.csv"
    path.write_bytes(b"text,label,note\nfine,pos,\xe9\nalso fine,neg,ok\n")
    assert [e.text for e in read_examples(path, encoding_errors="skip")] == ["fine", "also fine"]


def test_skip_in_jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"text": "ok \xc3\xa9", "label": "pos"}\n{"text": "bad \xe9", "label": "neg"}\n'
                     b'{"text": "fine", "label": "neg"}\n')
    assert [(e.line, e.text) for e in read_examples(path, encoding_errors="skip")] == [(1, "ok é"), (3, "fine")]


def test_replace_keeps_every_row_and_leaves_valid_utf8_alone(tmp_path):
    notes = []
    rows = read_examples(mixed_csv(tmp_path / "mixed.csv"), encoding_errors="replace", log=notes.append)
    assert len(rows) == 6 and rows[0].text == GOOD
    assert rows[1].text == "bad \ufffdclair" and rows[3].text == "bad \ufffdclair"
    assert notes == [f"{tmp_path / 'mixed.csv'}: 2 lines are not valid UTF-8; their bad bytes were read as U+FFFD"]


def test_an_unknown_mode_is_refused(tmp_path):
    assert "--encoding-errors must be one of strict, replace, skip" in error_for(
        mixed_csv(tmp_path / "m.csv"), encoding_errors="ignore")


def test_lpt_train_with_encoding_errors_skip(tmp_path, capsys):
    model = str(save_tiny_model(tmp_path / "model"))
    lines = [b"text,label"] + [f"{e.text},{e.label}".encode() for e in toy_examples(24)] + [b"\xe9\xe9 junk,pos"]
    (tmp_path / "train.csv").write_bytes(b"\n".join(lines) + b"\n")
    argv = ["train", "--model", model, "--task", "toy", "--data", str(tmp_path / "train.csv"), "--epochs", "1",
            "--out", str(tmp_path / "toy.safetensors"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "line 26: not valid UTF-8" in err and "--encoding-errors skip" in err, err
    assert not (tmp_path / "toy.safetensors").exists()
    assert main([*argv, "--encoding-errors", "skip"]) == 0
    assert "skipped 1 rows that are not valid UTF-8 (lines 26)" in capsys.readouterr().err
    assert (tmp_path / "toy.safetensors").is_file()
