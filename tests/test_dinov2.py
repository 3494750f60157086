"""The dinov2 backbone family: presets offline, official files loaded strictly, the forward equal to a reference
rebuilt from FORMATS.md (tests/dinov2_reference.py), transformers folders, freezing."""

from __future__ import annotations

import pytest
import torch

from anomseg.errors import AnomsegError
from anomseg.models import build_backbone
from anomseg.models.checkpoints import load_checkpoint, load_pretrained, save_checkpoint, build_from_checkpoint
from anomseg.models.dinov2 import PRESETS, encoder_config, resized_size
from anomseg.models.formats import detect_format, read_file
from anomseg.models.registry import ModelError
from dinov2_reference import official_state_dict, reference_features

PRESETS_TESTED = ("tiny", "tiny_reg", "dinov3_tiny")


@pytest.mark.parametrize("preset", PRESETS_TESTED)
def test_official_file_loads_and_forward_equals_the_reference(tmp_path, preset):
    sd = official_state_dict(preset)
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(sd, path)
    assert detect_format(read_file(path)) == ("dinov3_official" if preset.startswith("dinov3") else "dinov2_official")
    model = build_backbone("dinov2", 5, preset=preset, layers=[1, 3])
    info = load_checkpoint(model, path)
    assert info["format"].endswith("_official") and info["decoder"].startswith("not in the file")
    model = model.double().eval()
    p = model.patch
    # square at the table size (no interpolation for DINOv2), square elsewhere, two non-square grids
    for rows, cols in ((16, 16), (9, 9), (7, 11), (12, 5)):
        x = torch.randn(2, 3, rows * p, cols * p, dtype=torch.float64, generator=torch.Generator().manual_seed(rows))
        with torch.no_grad():
            ours = model.patch_features(x)
        ref = reference_features(preset, sd, x, [1, 3])
        assert ours.shape == (2, 96, rows, cols)
        # DINOv2: float64 equality; DINOv3: transformers computes RoPE angles in float32 (7e-7 measured)
        assert (ours - ref).abs().max().item() < (1e-12 if not preset.startswith("dinov3") else 5e-6)


def test_plain_interpolation_uses_the_official_offset():
    """At a non-square size the +0.1 scale factor of the plain models changes the features: a reference with
    the size-based interpolation (transformers' current plain form) must differ, the offset one must not."""
    sd = official_state_dict("tiny")
    model = build_backbone("dinov2", 3, preset="tiny")
    from anomseg.models.formats import dinov2 as fmt
    fmt.load_encoder(model, fmt.convert(model, sd, "test"), "test")
    model = model.double().eval()
    x = torch.randn(1, 3, 7 * 14, 11 * 14, dtype=torch.float64)
    with torch.no_grad():
        ours = model.patch_features(x)
        del model.encoder.embeddings.interpolate_pos_encoding  # back to transformers' own interpolation
        theirs = model.patch_features(x)
    ref = reference_features("tiny", sd, x, [3])
    assert (ours - ref).abs().max().item() < 1e-12
    assert (theirs - ref).abs().max().item() > 1e-3


def test_official_file_errors_name_the_keys(tmp_path):
    sd = official_state_dict("tiny")
    model = build_backbone("dinov2", 3, preset="tiny")
    broken = dict(sd)
    broken.pop("blocks.2.ls1.gamma")
    broken["blocks.9.attn.proj.weight"] = torch.zeros(48, 48)
    torch.save(broken, tmp_path / "bad.pth")
    with pytest.raises(ModelError) as e:
        load_checkpoint(model, tmp_path / "bad.pth")
    msg = str(e.value)
    assert "bad.pth" in msg and "layer_scale1" in msg and "missing" in msg and "left over" in msg and "\n" not in msg
    torch.save(official_state_dict("tiny_reg"), tmp_path / "reg.pth")  # registers into a plain model
    with pytest.raises(ModelError, match="register_tokens"):
        load_checkpoint(model, tmp_path / "reg.pth")


def test_transformers_folder_and_own_files_roundtrip(tmp_path):
    src = build_backbone("dinov2", 4, preset="tiny_reg", layers=[0, 3])
    src.encoder.save_pretrained(tmp_path / "hf")
    dst = build_backbone("dinov2", 4, preset="tiny_reg", layers=[0, 3])
    info = load_checkpoint(dst, tmp_path / "hf")
    assert info["format"] == "dinov2_transformers"
    for k, v in src.state_dict().items():
        if k.startswith("encoder."):
            assert torch.equal(v, dst.state_dict()[k]), k
    x = torch.randint(0, 255, (1, 3, 70, 98), dtype=torch.uint8)
    save_checkpoint(tmp_path / "own.pth", src)
    again, info = build_from_checkpoint(tmp_path / "own.pth")
    assert info["format"] == "anomseg"
    with torch.no_grad():
        assert torch.equal(src.eval()(x).logits, again.eval()(x).logits)
    wrong = build_backbone("dinov2", 4, preset="tiny")  # no registers: the folder does not fit
    with pytest.raises(ModelError, match="preset 'tiny'"):
        load_checkpoint(wrong, tmp_path / "hf")


def test_pretrained_takes_the_released_encoder(tmp_path):
    torch.save(official_state_dict("tiny"), tmp_path / "dinov2_vits14_pretrain.pth")
    model = build_backbone("dinov2:tiny", 3)
    before = model.decoder[1].weight.clone()
    out = load_pretrained(model, "dinov2:tiny", tmp_path / "dinov2_vits14_pretrain.pth")
    assert out["loaded"] > 0 and torch.equal(before, model.decoder[1].weight)


def test_presets_build_offline_with_the_released_sizes():
    """Configs only (no weights for the large ones): the released dimensions (FORMATS.md)."""
    expect = {"vits14": (384, 12, 6, 14, 0), "vitb14_reg": (768, 12, 12, 14, 4), "vitl14": (1024, 24, 16, 14, 0),
              "vitg14_reg": (1536, 40, 24, 14, 4), "dinov3_vits16": (384, 12, 6, 16, 4),
              "dinov3_vitl16": (1024, 24, 16, 16, 4), "dinov3_vith16plus": (1280, 32, 20, 16, 4)}
    for preset, (d, blocks, heads, patch, regs) in expect.items():
        cfg = encoder_config(preset)
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (d, blocks, heads, patch)
        assert getattr(cfg, "num_register_tokens", 0) == regs
    assert encoder_config("vitg14").use_swiglu_ffn and encoder_config("vitb14").image_size == 518
    assert {"vits14", "vitb14", "vitl14", "vitg14", "vits14_reg", "vitb14_reg", "vitl14_reg", "vitg14_reg"} <= set(PRESETS)


def test_size_rule_frozen_and_errors():
    assert resized_size(1024, 2048, 14) == (1022, 2044) and resized_size(720, 1280, 14) == (714, 1274)  # FORMATS.md
    model = build_backbone("dinov2", 3, preset="tiny", decoder="mlp")
    model.train()
    assert not model.encoder.training and model.decoder.training
    out = model(torch.randint(0, 255, (2, 3, 100, 150), dtype=torch.uint8))
    assert out.logits.shape == (2, 3, 6, 10) and out.features.shape == (2, 48, 6, 10)
    out.logits.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    unfrozen = build_backbone("dinov2", 3, preset="tiny", frozen=False)
    unfrozen(torch.randint(0, 255, (1, 3, 28, 28), dtype=torch.uint8)).logits.sum().backward()
    assert unfrozen.encoder.embeddings.patch_embeddings.projection.weight.grad is not None
    with pytest.raises(AnomsegError, match="blocks 0..3"):
        build_backbone("dinov2", 3, preset="tiny", layers=[4])
    with pytest.raises(AnomsegError, match="unknown"):
        build_backbone("dinov2:vitx14", 3)
