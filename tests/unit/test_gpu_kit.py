"""The offline GPU kit's pieces, cheaply (the whole `bench/gpu.sh --cpu-smoke` takes 1-2 minutes
on a 2-core machine, too long for CI; run it by hand, see bench/README.md):

- the wheel list covers every third-party module the server imports (else the GPU run fails there);
- the model written to the kit loads by path and computes what the original does (float16 weights);
- `unpack` (no pip there) picks the wheels this interpreter can use;
- the FLOP count used for utilisation matches torch's own count of a forward;
- the device equivalence checks pass on an intact engine and fail on a broken one;
- gpu.sh refuses to run without a kit, saying how to build one.
"""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch

import lpt.forward as forward_module

from lpt import Backbone
from tiny import make_backbone, random_texts

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_bench  # noqa: E402
import gpu_checks  # noqa: E402
import gpu_kit  # noqa: E402

pytestmark = pytest.mark.unit


def third_party_imports(package: Path) -> set[str]:
    """Top-level modules imported anywhere in a package, minus the standard library and lpt's own."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("lpt", "lpt_server", "__future__")}


def test_the_kit_carries_every_module_the_server_imports_that_the_gpu_machine_lacks():
    closure = gpu_kit.requirement_closure()
    assert {"fastapi", "uvicorn", "pydantic", "pydantic-core", "starlette", "pydantic-settings"} <= set(closure)
    assert not set(closure) & gpu_kit.ON_GPU_MACHINE
    providers = metadata.packages_distributions()
    have = set(closure) | gpu_kit.ON_GPU_MACHINE
    missing = {}
    for module in third_party_imports(ROOT / "server" / "lpt_server") | third_party_imports(ROOT / "adapters" / "lpt"):
        dists = {gpu_kit.canonical(d) for d in providers.get(module, [module])}
        if not dists & have and module not in gpu_kit.OPTIONAL:
            missing[module] = sorted(dists)
    assert not missing, f"imported by the server, neither in the kit nor on the GPU machine: {missing}"


def test_the_kit_model_loads_by_path_and_matches_the_original(tmp_path):
    bb = make_backbone("bert", lm_head=False)
    src = tmp_path / "src"
    bb.model.save_pretrained(src)
    bb.tokenizer.save_pretrained(src)
    info = gpu_kit.write_model(src, tmp_path / "kit")
    assert info["params"] == sum(p.numel() for p in bb.model.state_dict().values())
    assert (tmp_path / "kit" / "model.safetensors").stat().st_size < 0.6 * (src / "model.safetensors").stat().st_size
    kit = Backbone.load(str(tmp_path / "kit"))
    enc = bb.tokenizer(random_texts(4, seed=3, lo=3, hi=12), padding=True, return_tensors="pt")
    assert kit.tokenizer(random_texts(4, seed=3, lo=3, hi=12), padding=True)["input_ids"] == enc["input_ids"].tolist()
    with torch.inference_mode():
        a, b = kit.base(**enc).last_hidden_state, bb.base(**enc).last_hidden_state
    assert 0 < (a - b).abs().max() < 1e-2   # float16-rounded weights: close, not the same


def _wheel(path: Path, module: str) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", f"WHEEL = {path.name!r}\n")


def test_unpack_picks_the_wheels_this_interpreter_can_use(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    _wheel(wheels / "pure_pkg-1.0-py3-none-any.whl", "pure_pkg")
    _wheel(wheels / f"native_pkg-1.0-{tag}-{tag}-{plat}.whl", "native_pkg")
    _wheel(wheels / "native_pkg-1.0-py3-none-any.whl", "native_pkg")        # usable, but less specific
    _wheel(wheels / "native_pkg-1.0-cp39-cp39-win_amd64.whl", "native_pkg")
    _wheel(wheels / "other_pkg-1.0-cp39-cp39-win_amd64.whl", "other_pkg")
    assert gpu_kit.unpack(wheels, tmp_path / "site") == ["native-pkg", "pure-pkg"]
    assert f"{tag}-{tag}" in (tmp_path / "site" / "native_pkg" / "__init__.py").read_text()
    assert not (tmp_path / "site" / "other_pkg").exists()


def test_forward_flops_match_torchs_count():
    """Eager attention: its matmuls are counted (torch's counter skips CPU fused attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=64, attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(0, 100, (5, 24))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    assert gpu_bench.forward_flops(config, rows=5, tokens=24) == counter.get_total_flops()


def _tiny_kit(tmp_path: Path) -> tuple[Path, list[str]]:
    bb = make_backbone("bert", lm_head=False, init_range=0.1)
    bb.model.save_pretrained(tmp_path / "minilm")
    bb.tokenizer.save_pretrained(tmp_path / "minilm")
    return tmp_path, random_texts(40, seed=5, lo=20, hi=30)


def test_device_checks_pass_on_the_engine_and_fail_on_a_broken_one(tmp_path, monkeypatch):
    kit, texts = _tiny_kit(tmp_path)
    plan = gpu_bench.SMOKE
    checks = gpu_checks.equivalences(kit, plan, texts, gpu_bench.load_model)
    assert {c["check"] for c in checks} == {"mixed_row_equals_row_alone", "batch_split_equals_whole",
                                            "split_forward_equals_model", "device_matches_cpu_float32",
                                            "stacked_equals_one_by_one"}
    assert {c["dtype"] for c in checks} == set(plan.dtypes)
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    # padded keys no longer masked: a row's answer depends on its batch, and the staged forward
    # differs from the model's own (which masks them)
    monkeypatch.setattr(Backbone, "attention_bias", lambda self, valid: torch.zeros(
        valid.shape[0], 1, 1, valid.shape[1], dtype=self.dtype, device=valid.device))
    fp32 = dataclasses.replace(plan, dtypes=("float32",))
    broken = {c["check"] for c in gpu_checks.equivalences(kit, fp32, texts, gpu_bench.load_model) if not c["ok"]}
    assert {"mixed_row_equals_row_alone", "split_forward_equals_model"} <= broken
    monkeypatch.undo()
    # stacked generators that give every row the first generator's prompt
    real = forward_module.stacked_prompts
    monkeypatch.setattr(forward_module, "stacked_prompts", lambda gens, member, h, valid: real(
        gens, torch.zeros_like(member), h, valid))
    broken = {c["check"] for c in gpu_checks.equivalences(kit, fp32, texts, gpu_bench.load_model) if not c["ok"]}
    assert broken == {"stacked_equals_one_by_one"}


def test_gpu_sh_without_a_kit_says_how_to_build_one(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--cpu-smoke"], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "GPU_KIT": str(tmp_path / "none"), "OUT": str(tmp_path)},
                       timeout=30)
    assert r.returncode == 2
    assert "bench/gpu_kit.sh" in r.stderr
    assert not list(tmp_path.glob("*.json"))


def test_smoke_plan_is_the_gpu_plan_at_a_tiny_size():
    gpu, smoke = gpu_bench.GPU, gpu_bench.SMOKE
    assert gpu.device == "cuda" and smoke.device == "cpu"
    assert gpu.dtypes == smoke.dtypes == ("float32", "bfloat16", "float16")
    assert (gpu.tasks, gpu.tokens_per_row, min(gpu.batches), max(gpu.batches)) == (64, 128, 64, 1024)
    assert gpu_bench.RANDOM_BERTS[gpu.base]["num_hidden_layers"] == 12
    assert gpu_bench.RANDOM_BERTS[gpu.base]["hidden_size"] == 768
