"""The ``dinov2`` backbone against the official DINOv2 model code, same random weights, same images.

    python tools/bench/compare_dinov2_official.py --official /path/to/facebookresearch/dinov2 [--sizes vits14 ...]

``--official``: a checkout of github.com/facebookresearch/dinov2 (tested at b8931f7). For each size (default: the
tiny test size, ``vits14`` and ``vits14_reg`` at their released dimensions) the official
``DinoVisionTransformer`` is built as its hub entry builds it (patch 14, img_size 518, init_values 1.0,
block_chunks 0; registers 4 + interpolate_antialias True + interpolate_offset 0.0 for ``_reg``, else offset 0.1),
its randomly initialised weights perturbed (so that layer scale and biases are not trivial) and saved as a
torch.hub file, which ``load_checkpoint`` reads into an anomseg ``dinov2`` backbone. Both run
``get_intermediate_layers(x, n=layers, reshape=True, norm=True)`` (anomseg: ``patch_features``) on the same
normalised inputs at square and non-square sizes (518 x 518, where no interpolation happens; 224 x 224; 280 x
560; 518 x 1036) in float64 and float32. xformers is disabled (``XFORMERS_DISABLED=1``): the official attention
then runs ``scaled_dot_product_attention``. Last line: ``max |difference| float64 <a> float32 <b>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

from anomseg.models import build_backbone
from anomseg.models.checkpoints import load_checkpoint
from anomseg.models.dinov2 import PRESETS

SIZES = [(518, 518), (224, 224), (280, 560), (518, 1036)]


def official_model(vt, block_mod, attn_mod, spec: dict, registers: int):
    return vt.DinoVisionTransformer(
        img_size=spec["image"], patch_size=spec["patch"], embed_dim=spec["hidden"], depth=spec["blocks"],
        num_heads=spec["heads"], mlp_ratio=4, block_fn=partial(block_mod.Block, attn_class=attn_mod.MemEffAttention),
        init_values=1.0, block_chunks=0, num_register_tokens=registers,
        interpolate_antialias=bool(registers), interpolate_offset=0.0 if registers else 0.1)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of facebookresearch/dinov2")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "tiny_reg", "vits14", "vits14_reg"])
    ap.add_argument("--layers", nargs="+", type=int, default=None, help="0-based blocks (default: 4 spread blocks)")
    args = ap.parse_args(argv)
    os.environ["XFORMERS_DISABLED"] = "1"
    sys.path.insert(0, str(Path(args.official).resolve()))
    import dinov2.layers.attention as attn_mod
    import dinov2.layers.block as block_mod
    import dinov2.models.vision_transformer as vt

    worst = {torch.float64: 0.0, torch.float32: 0.0}
    for preset in args.sizes:
        spec = PRESETS[preset]
        torch.manual_seed(0)
        ref = official_model(vt, block_mod, attn_mod, spec, spec["registers"])
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        layers = args.layers or sorted({spec["blocks"] // 4 - 1, spec["blocks"] // 2 - 1, 3 * spec["blocks"] // 4 - 1,
                                        spec["blocks"] - 1})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"dinov2_{preset}_pretrain.pth"
            torch.save(ref.state_dict(), path)
            ours = build_backbone("dinov2", 19, preset=preset, layers=layers)
            info = load_checkpoint(ours, path)
        for dtype in (torch.float64, torch.float32):
            ref.to(dtype).eval()
            ours.to(dtype).eval()
            for h, w in SIZES:
                x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * w), dtype=dtype)
                with torch.no_grad():
                    a = torch.cat(ref.get_intermediate_layers(x, n=layers, reshape=True, norm=True), 1)
                    b = ours.patch_features(x)
                diff = (a - b).abs().max().item()
                worst[dtype] = max(worst[dtype], diff)
                emb = ours.encoder.embeddings
                official_interp = emb.__dict__.pop("interpolate_pos_encoding")  # transformers' own, for contrast
                with torch.no_grad():
                    hf = (a - ours.patch_features(x)).abs().max().item()
                emb.interpolate_pos_encoding = official_interp
                print(f"{preset:11s} {info['format']} layers {layers} {str(dtype)[6:]:8s} {h:4d} x {w:4d}: "
                      f"max |official - anomseg| {diff:.3g} (mean |feature| {a.abs().mean().item():.3g}; with "
                      f"transformers' own interpolation {hf:.3g})")
    print(f"max |difference| float64 {worst[torch.float64]:.3g} float32 {worst[torch.float32]:.3g}")
    return worst[torch.float64]


if __name__ == "__main__":
    main()
