"""The training form (server/lpt_server/train_form.py): a multipart body read in pieces, its
fields turned into `lpt train` options, and every refusal worded exactly as `lpt train` words it
(the same message for the same file and options, from the server and from the command line)."""
from __future__ import annotations

import contextlib
import io

import httpx
import pytest
from tiny import make_backbone, save_backbone

from lpt import cli as lpt_cli
from lpt_server import train_form, upload
from lpt_server.store_layout import InvalidName
from lpt_server.train_form import FormError, Runner, TrainFormReader, prepare_job, safe_filename

pytestmark = pytest.mark.unit

ROWS = "text,label\n" + "".join(f"{'great fun' if i % 2 else 'bad boring'} w{i},{'pos' if i % 2 else 'neg'}\n"
                                for i in range(24))


def body(fields: dict | list, files: dict) -> tuple[str, bytes]:
    req = httpx.Request("POST", "http://x/v1/train", data=fields, files=files)
    return req.headers["content-type"], req.read()


def read(fields, files, limit=1 << 20, chunk=7):
    content_type, data = body(fields, files)
    reader = TrainFormReader(content_type, limit)
    for i in range(0, len(data), chunk):
        reader.feed(data[i:i + chunk])
    return reader.finish()


def test_fields_and_files_come_through_in_pieces():
    form = read({"task": "my-task", "text_column": "review", "epochs": "2", "labels": ["neg", "pos"],
                 "label_words": "bad,good", "seed": ""},
                {"data": ("../../etc/train.csv", ROWS.encode()), "dev": ("dev.tsv", b"a\tb\n")})
    assert form.task == "my-task"
    assert form.files == {"data": ("train.csv", ROWS.encode()), "dev": ("dev.tsv", b"a\tb\n")}
    assert form.fields["labels"] == ["neg", "pos"] and form.fields["label_words"] == ["bad", "good"]
    assert "seed" not in form.fields                       # an empty field is an unset one (HTML forms)
    assert form.argv() == ["--text-column=review", "--labels", "neg", "pos", "--label-words", "bad", "good",
                           "--epochs=2"]


@pytest.mark.parametrize("fields, files, message", [
    ({"task": "t", "out": "/etc/passwd"}, {"data": ("a.csv", b"x")}, "unknown form field 'out'"),
    ({"task": "t", "epochs": ["1", "2"]}, {"data": ("a.csv", b"x")}, "two 'epochs' fields"),
    ({"task": "t"}, [("data", ("a.csv", b"x")), ("data", ("b.csv", b"y"))], "two 'data' files"),
    ({"task": "t", "template": "x" * 5000}, {"data": ("a.csv", b"x")}, "over 4096 bytes"),
])
def test_a_form_the_server_cannot_use_is_refused_naming_the_field(fields, files, message):
    with pytest.raises(upload.UploadError, match=message):
        read(fields, files)


def test_missing_parts_and_bad_names():
    with pytest.raises(FormError, match="no 'data' file"):
        read({"task": "t"}, {"dev": ("a.csv", b"x")})
    with pytest.raises(FormError, match="no 'task' field"):
        read({"epochs": "1"}, {"data": ("a.csv", b"x")})
    with pytest.raises(InvalidName):
        read({"task": "../up"}, {"data": ("a.csv", b"x")})
    with pytest.raises(upload.UploadError, match="multipart/form-data"):
        TrainFormReader("application/json", 100)


def test_the_files_are_bounded_as_they_stream_in():
    with pytest.raises(upload.TooLarge, match="over the limit of 1000 bytes"):
        read({"task": "t"}, {"data": ("a.csv", b"x" * 600), "dev": ("b.csv", b"y" * 600)}, limit=1000)
    read({"task": "t"}, {"data": ("a.csv", b"x" * 500), "dev": ("b.csv", b"y" * 499)}, limit=1000)


def test_safe_filename():
    assert safe_filename("C:\\data\\my train.csv", "data") == "my_train.csv"
    assert safe_filename("../.hidden", "data") == "hidden"
    assert safe_filename(None, "dev") == "dev" and safe_filename("...", "dev") == "dev"


# ---- the same refusals as `lpt train` --------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    bb = make_backbone("bert", lm_head=False)
    return save_backbone(bb, tmp_path_factory.mktemp("tiny-model")), bb


def cli_message(tmp_path, monkeypatch, model, filename, content: bytes, options: list[str]) -> str:
    """What `lpt train` prints for this file (run where the file is, named as the client named it)."""
    (tmp_path / filename).write_bytes(content)
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = lpt_cli.main(["train", "--task", "t", "--data", filename, "--model", str(model), "--quiet",
                                 "--no-save", *options])
        except SystemExit as e:      # argparse prints usage, then the message
            code = e.code
    assert code == 2, err.getvalue()
    text, prefix = err.getvalue(), "lpt train: error: "     # after the model's loading bar, argparse's usage
    return text[text.rindex(prefix) + len(prefix):].strip()


CASES = {
    "unknown column": ("train.csv", ROWS.encode(), {"label_column": "sentiment"}, "has no column 'sentiment'"),
    "empty file": ("train.csv", b"", {}, "is empty"),
    "one label": ("train.csv", b"text,label\na,x\nb,x\n", {}, "every row has the label 'x'"),
    "bad encoding": ("train.csv", b"text,label\ncaf\xe9,a\nok,b\n", {}, "not valid UTF-8"),
    "no format": ("train.txt", ROWS.encode(), {}, "cannot tell the format"),
    "bad jsonl": ("train.jsonl", b'{"text": "a", "label": "x"}\n{oops\n', {}, "line 2: the line is not valid JSON"),
    "deep jsonl": ("train.jsonl", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b', "label": "x"}\n', {},
                   "line 1: the line nests 100001 levels deep"),
    "huge number": ("train.jsonl", b'{"text": 1' + b"0" * 5000 + b', "label": "x"}\n', {},
                    "line 1: the line is not valid JSON text (bad UTF-8, or a number too long to read)"),
    "lone surrogate": ("train.jsonl", b'{"text": "a", "label": "x"}\n{"text": "bad \\ud800 film", "label": "y"}\n', {},
                       "line 2: 'text' holds a lone surrogate"),
    "nan text": ("train.jsonl", b'{"text": NaN, "label": "x"}\n', {}, "line 1: 'text' holds nan (a JSON NaN or Infinity)"),
    "huge epochs": ("train.csv", ROWS.encode(), {"epochs": "9" * 4000}, "--epochs must be at most 10000, got a number of 4000 digits"),
    "bad int": ("train.csv", ROWS.encode(), {"epochs": "two"}, "invalid int value: 'two'"),
    "epochs 0": ("train.csv", ROWS.encode(), {"epochs": "0"}, "--epochs must be at least 1"),
    "lr -1": ("train.csv", ROWS.encode(), {"lr": "-1"}, "--lr must be more than 0, got -1.0"),
    "lr nan": ("train.csv", ROWS.encode(), {"lr": "nan"}, "--lr must be a finite number, got nan"),
    "bad choice": ("train.csv", ROWS.encode(), {"generator": "huge"}, "invalid choice: 'huge'"),
    "layer": ("train.csv", ROWS.encode(), {"layer": "9"}, "the adapter configuration is invalid"),
    "label words": ("train.csv", ROWS.encode(), {"label_words": "bad"}, "--label-words has 1 words for 2 labels"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_data_and_options_get_lpt_trains_own_message(case, model_dir, tmp_path, monkeypatch):
    filename, content, fields, expected = CASES[case]
    model, bb = model_dir
    form = read({"task": "t", **fields}, {"data": (filename, content)})
    with pytest.raises(FormError) as refused:
        prepare_job(form, Runner(str(model), "cpu", "float32", 1), bb)
    message = str(refused.value)
    assert expected in message
    assert "lpt-train-" not in message and str(tmp_path) not in message     # no server path shown
    assert message == cli_message(tmp_path, monkeypatch, model, filename, content,
                                  [a for a in form.argv()])


def test_methods_that_write_no_adapter_are_refused(model_dir):
    model, bb = model_dir
    form = read({"task": "t", "method": "finetune"}, {"data": ("train.csv", ROWS.encode())})
    with pytest.raises(FormError, match="--method finetune writes no adapter file: the server trains lpt, static"):
        prepare_job(form, Runner(str(model), "cpu", "float32", 1), bb)
    assert not bb.model.embeddings.word_embeddings.weight.requires_grad    # the served model stays frozen


def test_options_that_make_an_adapter_the_store_would_refuse_are_a_400_before_a_job(model_dir, tmp_path):
    """The adapter's size is known before training: a job whose adapter is over
    LPT_MAX_ADAPTER_BYTES trained to the end and then failed to be stored."""
    from lpt import new_adapter
    from lpt.adapter import adapter_bytes

    model, bb = model_dir
    runner = Runner(str(model), "cpu", "float32", 1)
    options = {"task": "t", "prompt_length": "8", "bottleneck": "64"}
    actual = len(adapter_bytes(new_adapter(bb, task="t", labels=["neg", "pos"], layer=bb.num_layers // 2,
                                           prompt_length=8, bottleneck=64)))
    form = read(options, {"data": ("train.csv", ROWS.encode())})
    with pytest.raises(FormError, match=r"these options make an adapter of about .* MiB, over the server's limit "
                                        r".*\(LPT_MAX_ADAPTER_BYTES\): lower --prompt-length or --bottleneck"):
        prepare_job(form, runner, bb, max_adapter_bytes=actual - 1)
    job = prepare_job(read(options, {"data": ("train.csv", ROWS.encode())}), runner, bb,
                      max_adapter_bytes=actual + train_form.HEADER_ALLOWANCE)
    job.discard()


def test_a_good_form_becomes_a_job_with_the_servers_model(model_dir):
    model, bb = model_dir
    form = read({"task": "my-task", "epochs": "1"}, {"data": ("train.csv", ROWS.encode())})
    job = prepare_job(form, Runner(str(model), "cpu", "float32", 3), bb)
    try:
        assert job.task == "my-task" and job.state == "queued"
        assert (job.workdir / "data" / "train.csv").read_bytes() == ROWS.encode()
        args = lpt_cli.parse_train_args(job.argv)
        assert (args.model, args.threads, args.epochs, args.out) == (str(model), 3, 1, str(job.out))
    finally:
        job.discard()
    assert not job.workdir.exists()


def test_a_list_value_cannot_smuggle_in_an_option(model_dir, tmp_path):
    """Each label is an argument of its own: `neg,pos,--dev=FILE` would make the server read any
    file it can (and show its columns in the 400). Negative numbers stay labels."""
    model, bb = model_dir
    secret = tmp_path / "secret.csv"
    secret.write_text("secret_key,value\nk,v\n")
    for field, value in (("labels", f"neg,pos,--dev={secret}"), ("label_words", "bad,--no-save")):
        form = read({"task": "t", field: value}, {"data": ("train.csv", ROWS.encode())})
        with pytest.raises(FormError, match=f"form field '{field}': the value '--") as err:
            prepare_job(form, Runner(str(model), "cpu", "float32", 1), bb)
        assert "secret_key" not in str(err.value)
    form = read({"task": "t", "labels": "-1,1"}, {"data": ("train.csv", ROWS.encode())})
    assert form.argv() == ["--labels", "-1", "1"]
    assert lpt_cli.parse_train_args([*form.argv(), "--task", "t", "--data", "d.csv"]).labels == ["-1", "1"]
