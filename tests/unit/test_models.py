"""lpt's own model modules (lpt/models.py) against transformers' models, the independent
reference: a tiny model of each family is saved as a checkpoint folder, `Backbone.load` builds it
without transformers' model classes, and every stage must give what transformers' model gives."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from lpt import checkpoint
from lpt.backbone import FAMILIES, Backbone, ModelLoadError
from lpt.forward import lower_pass
from reference_forward import transformers_backbone
from test_backbone import _tokens, distinct_norms, reference
from tiny import make_backbone, own_twin, random_texts, save_backbone

pytestmark = pytest.mark.unit
NATIVE = sorted(FAMILIES)


def twin(bb: Backbone, tmp_path) -> Backbone:
    return own_twin(bb, tmp_path / "model")


def test_every_family_of_the_table_is_written_here():
    for family, spec in FAMILIES.items():     # its row's builder makes lpt's own modules of the family's config
        model = spec.build(make_backbone(family).config, True)
        assert type(model).__module__ == "lpt.models" and model.config.model_type == family, family


@pytest.mark.parametrize("family, lm_head", [(f, True) for f in NATIVE] + [("bert", False)])
def test_a_loaded_model_is_lpts_own_and_answers_as_transformers_does(family, lm_head, tmp_path):
    # init 0.2: attention far from uniform, so a wrong position, mask or scale shows
    hf = distinct_norms(make_backbone(family, lm_head=lm_head, init_range=0.2))
    own = twin(hf, tmp_path)
    assert type(own.model).__module__ == "lpt.models" and own.has_lm_head == hf.has_lm_head
    tokens = _tokens(hf, random_texts(6, seed=1), None if hf.causal else random_texts(6, seed=2))
    assert not tokens.valid.all() and (tokens.token_type_ids is not None) == (family in ("bert", "electra"))
    ref = reference(hf, tokens)
    with torch.no_grad():
        plain = own.base(input_ids=tokens.input_ids, attention_mask=tokens.valid.long(),
                         **({} if tokens.token_type_ids is None else {"token_type_ids": tokens.token_type_ids}))
        staged = {k: own.final_norm(own.run_layers(lower_pass(own, tokens, {k})[k], tokens.valid, k, own.num_layers))
                  for k in (0, 2, own.num_layers)}
    assert (plain.last_hidden_state - ref)[tokens.valid].abs().max() < 1e-5       # padded blocks
    for k, h in staged.items():                                                   # packed blocks
        assert (h - ref)[tokens.valid].abs().max() < 1e-5, f"split at {k}"
    assert ref[tokens.valid].std() > 0.1
    if lm_head:
        ids = torch.tensor([5, 7, 11, 40])
        with torch.no_grad():
            scores = own.label_scores(staged[own.num_layers][:, 1], ids)
        assert (scores - reference(hf, tokens, head=True)[:, 1][:, ids]).abs().max() < 1e-4
    assert own.fingerprint() == hf.fingerprint() and own.max_positions == hf.max_positions


@pytest.mark.parametrize("family", NATIVE)
def test_the_output_projection_is_the_word_embeddings_and_weights_stay_mapped(family, tmp_path):
    own = twin(make_backbone(family), tmp_path)
    emb = own.base.get_input_embeddings().weight
    assert own.lm_output.weight is emb
    file = tmp_path / "model" / "model.safetensors"
    assert all(_mapped_from(p, file) for p in own.model.parameters())     # not copied
    before = file.read_bytes()
    with torch.no_grad():          # full fine-tuning writes to the parameters: the file must not change
        for p in own.model.parameters():
            p.add_(1.0)
    assert file.read_bytes() == before


def _mapped_from(t: torch.Tensor, file) -> bool:
    """Whether t's memory lies in a mapping of `file` (/proc/self/maps)."""
    at = t.data_ptr()
    for line in open("/proc/self/maps"):
        span, *_, path = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in span.split("-"))
        if path.strip() == str(file) and lo <= at < hi:
            return True
    return False


def test_a_bfloat16_load_converts_every_tensor(tmp_path):
    own = Backbone.load(save_backbone(make_backbone("roberta"), tmp_path / "m"), dtype="bfloat16")
    assert {p.dtype for p in own.model.parameters()} == {torch.bfloat16}


def test_training_mode_drops_out_and_eval_mode_does_not(tmp_path):
    own = twin(make_backbone("bert"), tmp_path)
    h = torch.randn(2, 5, own.hidden_size)
    block = own.layers[0]
    with torch.no_grad():
        assert torch.equal(block(h), block(h))
        block.train()
        assert not torch.equal(block(h), block(h))


def test_a_checkpoint_missing_a_tensor_is_refused_by_name(tmp_path):
    folder = save_backbone(make_backbone("distilbert"), tmp_path / "m")
    tensors = load_file(f"{folder}/model.safetensors")
    key = next(k for k in tensors if "layer.1.ffn.lin2.weight" in k)
    save_file({k: v for k, v in tensors.items() if k != key}, f"{folder}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="transformer.layer.1.ffn.lin2.weight"):
        Backbone.load(folder)


HEADS = {"bert": "cls.predictions.decoder.weight", "roberta": "lm_head.decoder.weight",
         "distilbert": "vocab_projector.weight", "electra": "generator_lm_head.weight", "gpt2": "lm_head.weight",
         "mpnet": "lm_head.decoder.weight"}


@pytest.mark.parametrize("family", sorted(HEADS))
def test_an_output_projection_of_its_own_in_the_checkpoint_stays_its_own(family, tmp_path):
    """The config says tied (the default) but the file holds other values: transformers keeps
    them, and so does lpt."""
    folder = save_backbone(make_backbone(family, init_range=0.2), tmp_path / "m")
    tensors = load_file(f"{folder}/model.safetensors")
    emb = next(k for k in tensors if k.endswith(("word_embeddings.weight", "wte.weight")))
    torch.manual_seed(0)
    tensors[HEADS[family]] = tensors[emb] + 0.3 * torch.randn_like(tensors[emb])
    save_file(tensors, f"{folder}/model.safetensors", metadata={"format": "pt"})
    own, ref = Backbone.load(folder), transformers_backbone(folder)
    assert type(own.model).__module__ == "lpt.models" and own.lm_output.weight is not own.base.get_input_embeddings().weight
    tokens = _tokens(ref, random_texts(3, seed=3))
    ids = torch.tensor([5, 7, 11, 40])
    with torch.no_grad():
        h = own.final_norm(own.run_layers(lower_pass(own, tokens, {0})[0], tokens.valid, 0, own.num_layers))
        scores = own.label_scores(h[:, 1], ids)
    assert (scores - reference(ref, tokens, head=True)[:, 1][:, ids]).abs().max() < 1e-4


def test_the_weight_files_are_read_in_transformers_order_and_unreadable_ones_left_to_it(tmp_path):
    """Saved twice into one folder, one file after shards: transformers reads model.safetensors
    (the shards' index stays behind, its shards gone), and so does lpt. A checkpoint lpt cannot
    read loads through transformers."""
    folder = tmp_path / "m"
    make_backbone("bert", seed=1).model.save_pretrained(folder, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    hf = make_backbone("bert", seed=0)
    save_backbone(hf, folder)
    own = Backbone.load(str(folder))
    assert type(own.model).__module__ == "lpt.models" and own.fingerprint() == hf.fingerprint()
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    assert checkpoint.read_tensors(folder) is None
    with pytest.raises(ModelLoadError, match="cannot load model .*m'"):     # transformers cannot either: one line
        Backbone.load(str(folder))


def test_a_sharded_checkpoint_loads_the_same(tmp_path):
    hf = make_backbone("roberta", init_range=0.2)
    folder = save_backbone(hf, tmp_path / "m")
    hf.model.save_pretrained(folder, max_shard_size="20KB")
    (tmp_path / "m" / "model.safetensors").unlink()
    assert len(list((tmp_path / "m").glob("model-*-of-*.safetensors"))) > 1
    own = Backbone.load(folder)
    assert type(own.model).__module__ == "lpt.models" and own.fingerprint() == hf.fingerprint()


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_a_checkpoint_with_a_head_and_unprefixed_base_keys_loads_the_same(family, tmp_path):
    """The hub's own GPT-2 files name the base model's tensors `h.0...`, `wte.weight`, under a
    config for GPT2LMHeadModel; transformers adds the prefix, and so does lpt."""
    hf = make_backbone(family, init_range=0.2)
    folder = save_backbone(hf, tmp_path / "m")
    prefix = hf.model.base_model_prefix + "."
    tensors = load_file(f"{folder}/model.safetensors")
    assert sum(k.startswith(prefix) for k in tensors) > 10
    save_file({k.removeprefix(prefix): v for k, v in tensors.items()}, f"{folder}/model.safetensors",
              metadata={"format": "pt"})
    own = Backbone.load(folder)
    assert own.fingerprint() == hf.fingerprint() and own.has_lm_head
    tokens = _tokens(hf, random_texts(3, seed=6))
    ids = torch.tensor([5, 7, 11])
    with torch.no_grad():
        h = own.final_norm(own.run_layers(lower_pass(own, tokens, {0})[0], tokens.valid, 0, own.num_layers))
        scores = own.label_scores(h[:, 1], ids)
    assert (scores - reference(hf, tokens, head=True)[:, 1][:, ids]).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_a_masked_lm_config_over_a_base_checkpoint_loads_the_base_and_invents_no_head(family, tmp_path):
    """sentence-transformers' models (all-mpnet-base-v2 among them) name a masked-LM architecture
    over the base model's weights alone: lpt serves the base, with no LM head, rather than refuse."""
    hf = make_backbone(family, init_range=0.2)
    folder = save_backbone(hf, tmp_path / "m")
    prefix = hf.model.base_model_prefix + "."
    tensors = load_file(f"{folder}/model.safetensors")
    save_file({k: v for k, v in tensors.items() if k.startswith(prefix)}, f"{folder}/model.safetensors",
              metadata={"format": "pt"})
    own = Backbone.load(folder)
    assert own.modules_from == "lpt" and not own.has_lm_head and own.fingerprint() == hf.fingerprint()
    tokens = _tokens(hf, random_texts(3, seed=7))
    with torch.no_grad():
        got = own.run_layers(lower_pass(own, tokens, {0})[0], tokens.valid, 0, own.num_layers)
    assert (got - reference(hf, tokens))[tokens.valid].abs().max() < 1e-5


def test_a_checkpoint_unlike_its_config_is_refused_naming_the_tensor(tmp_path):
    hf = make_backbone("bert")
    folder = save_backbone(hf, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(ModelLoadError, match=r"intermediate.dense.weight is \[64, 32\], the config makes it \[48, 32\]"):
        Backbone.load(folder)


@pytest.mark.parametrize("own", [False, True], ids=["transformers", "own-modules"])
def test_gpt2_adds_token_types_as_transformers_does(own, tmp_path):
    """Some GPT-2 fine-tunes ship a BERT tokenizer, which gives token types: transformers adds
    their word embeddings, and so does lpt's embedding step (on either kind of module)."""
    hf = make_backbone("gpt2", init_range=0.2)
    bb = own_twin(hf, tmp_path / "m") if own else hf
    ids, types = torch.tensor([[5, 9, 12, 7]]), torch.tensor([[0, 0, 1, 1]])
    with torch.no_grad():
        ref = hf.base(input_ids=ids, token_type_ids=types).last_hidden_state
        got = bb.final_norm(bb.run_layers(bb.embed(ids, types), None, 0, bb.num_layers))
        without = bb.final_norm(bb.run_layers(bb.embed(ids, None), None, 0, bb.num_layers))
    assert (got - ref).abs().max() < 1e-5 and (without - ref).abs().max() > 1e-2


def test_a_stray_embedding_size_means_nothing_outside_electra(tmp_path):
    hf = make_backbone("roberta", init_range=0.2)
    hf.config.embedding_size = 16                 # transformers' RoBERTa never reads it
    own = Backbone.load(save_backbone(hf, tmp_path / "m"))
    tokens = _tokens(hf, random_texts(3, seed=4))
    with torch.no_grad():
        got = own.run_layers(lower_pass(own, tokens, {0})[0], tokens.valid, 0, own.num_layers)
    assert (got - reference(hf, tokens))[tokens.valid].abs().max() < 1e-5


def test_a_checkpoint_in_older_names_loads_the_same(tmp_path):
    """A base model saved under its prefix (from a pre-training checkpoint), LayerNorm weights
    named as TF-era checkpoints name them (gamma, beta)."""
    hf = distinct_norms(make_backbone("bert", lm_head=False, init_range=0.2))
    folder = save_backbone(hf, tmp_path / "m")
    tensors = load_file(f"{folder}/model.safetensors")
    renamed = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    assert sum(k.endswith("gamma") for k in renamed) == 2 * hf.num_layers + 1
    save_file(renamed, f"{folder}/model.safetensors", metadata={"format": "pt"})
    own = Backbone.load(folder)
    tokens = _tokens(hf, random_texts(4, seed=5))
    with torch.no_grad():
        got = own.run_layers(lower_pass(own, tokens, {0})[0], tokens.valid, 0, own.num_layers)
    assert (got - reference(hf, tokens))[tokens.valid].abs().max() < 1e-5


def test_what_lpt_does_not_write_loads_through_transformers(tmp_path):
    for family, setting, value in (("bert", "hidden_act", "quick_gelu"), ("bert", "position_embedding_type", "relative_key"),
                                   ("distilbert", "sinusoidal_pos_embds", True), ("roberta", "pad_token_id", None),
                                   ("bert", "is_decoder", True), ("gpt2", "scale_attn_by_inverse_layer_idx", True),
                                   ("gpt2", "reorder_and_upcast_attn", True)):
        hf = make_backbone(family)
        setattr(hf.config, setting, value)
        folder = save_backbone(hf, tmp_path / setting)
        assert checkpoint.build(FAMILIES[family].build, hf.config, folder, True, torch.float32) is None, setting
        if setting != "pad_token_id":     # (transformers itself needs RoBERTa's pad id)
            loaded = Backbone.load(folder)
            assert type(loaded.model).__module__.startswith("transformers."), setting
            assert loaded.modules_from == "transformers"      # what /info says


def test_a_hub_id_loads_from_its_cached_snapshot_into_lpts_modules(tmp_path):
    """A Hugging Face id resolves to its snapshot in the cache (offline here: the cache laid out
    as the hub client writes it) and builds lpt's modules, as a local folder does."""
    snapshot = tmp_path / "hub" / "models--lpt-test--tiny-bert" / "snapshots" / ("0" * 40)
    hf = make_backbone("bert", init_range=0.2)
    save_backbone(hf, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = ("import torch; from lpt import Backbone; bb = Backbone.load('lpt-test/tiny-bert'); "
            "print(type(bb.model).__module__, bb.fingerprint()['weights_sha256'])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.split() == ["lpt.models", hf.fingerprint()["weights_sha256"]], out.stdout + out.stderr[-2000:]


def test_serving_the_embedded_model_imports_none_of_transformers_model_code():
    """What `lpt serve` imports and runs to load its model: the app, the server's engine for the
    embedded model (as its settings make it), and nothing of transformers' model code."""
    code = ("import sys; from lpt_server import create_app; from lpt_server.cli import main; "
            "from lpt_server.runtime import default_engine; from lpt_server.settings import Settings; "
            "engine = default_engine(Settings(model='minilm')); bb = engine.backbone; "
            "print(type(bb.model).__module__, sorted(m for m in sys.modules if m.startswith(("
            "'transformers.modeling_utils', 'transformers.models.bert.modeling', 'torch._dynamo', 'sympy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["lpt.models", "[]"], out.stdout + out.stderr[-2000:]
