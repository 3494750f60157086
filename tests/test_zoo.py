"""``anomseg zoo check`` on files written here in each release's layout (key names and shapes from
../shared/docs/FORMATS.md and the publishers' model zoos, not from anomseg's code), and refusals.

Tensors are stored expanded from one random number (``torch.randn(1).expand(shape)``: torch.save keeps the one-element
storage), so a file has every identifying key at its release shape without the release's size (a Swin-L
Mask2Former is 860 MB). Only the keys that tell releases apart and that the format detection reads are written:
backbone stem and blocks, the predictor's class rows, queries and decoder layers."""

import hashlib

import numpy as np
import pytest
import torch

from anomseg.cli import main as cli
from anomseg.models.zoo import ZOO, identify


def t(*shape):
    return torch.randn(1).expand(*shape)


def detectron2_m2f(backbone="swin", dim=192, depths=(2, 2, 18, 2), classes=19, extra_rows=1, dec_layers=9, queries=100,
                   res4=23):
    """Mask2Former in detectron2's names (FORMATS.md "Checkpoint layouts"), as in RbA's model_final.pth."""
    sd = {}
    if backbone == "swin":
        sd["backbone.patch_embed.proj.weight"] = t(dim, 3, 4, 4)
        for i, n in enumerate(depths):
            for j in range(n):
                d = dim * 2 ** i
                sd[f"backbone.layers.{i}.blocks.{j}.norm1.weight"] = t(d)
                sd[f"backbone.layers.{i}.blocks.{j}.attn.qkv.weight"] = t(3 * d, d)
    else:
        sd["backbone.stem.conv1.weight"] = t(64, 3, 7, 7)
        for i in range(res4):
            sd[f"backbone.res4.{i}.conv1.weight"] = t(256, 1024, 1, 1)
    p = "sem_seg_head.predictor."
    sd[p + "query_feat.weight"] = t(queries, 256)
    sd[p + "query_embed.weight"] = t(queries, 256)
    sd[p + "class_embed.weight"] = t(classes + extra_rows, 256)
    for i in range(dec_layers):
        sd[p + f"transformer_self_attention_layers.{i}.self_attn.in_proj_weight"] = t(768, 256)
    return {"model": sd}


def transformers_m2f(dim=96, depths=(2, 2, 6, 2), classes=19, dec_layers=9):
    e = "model.pixel_level_module.encoder."
    sd = {e + "embeddings.patch_embeddings.projection.weight": t(dim, 3, 4, 4)}
    for i, n in enumerate(depths):
        for j in range(n):
            sd[e + f"encoder.layers.{i}.blocks.{j}.layernorm_before.weight"] = t(dim * 2 ** i)
    sd["model.transformer_module.queries_features.weight"] = t(100, 256)
    for i in range(dec_layers):
        sd[f"model.transformer_module.decoder.layers.{i}.fc1.weight"] = t(2048, 256)
    sd["class_predictor.weight"] = t(classes + 1, 256)
    return sd


def dinov2(dim, depth, registers=False):
    sd = {"cls_token": t(1, 1, dim), "pos_embed": t(1, 1370, dim), "mask_token": t(1, dim),
          "patch_embed.proj.weight": t(dim, 3, 14, 14), "patch_embed.proj.bias": t(dim), "norm.weight": t(dim)}
    if registers:
        sd["register_tokens"] = t(1, 4, dim)
    for i in range(depth):
        sd[f"blocks.{i}.norm1.weight"] = t(dim)
        sd[f"blocks.{i}.attn.qkv.weight"] = t(3 * dim, dim)
        sd[f"blocks.{i}.ls1.gamma"] = t(dim)
    return sd


def dinov3(dim, depth):
    sd = {"cls_token": t(1, 1, dim), "storage_tokens": t(1, 4, dim), "mask_token": t(1, dim),
          "patch_embed.proj.weight": t(dim, 3, 16, 16), "rope_embed.periods": t(dim // 4 // 6)}
    for i in range(depth):
        sd[f"blocks.{i}.norm1.weight"] = t(dim)
        sd[f"blocks.{i}.attn.qkv.weight"] = t(3 * dim, dim)
    return sd


CASES = [
    ("m2f_swin_l.pth", lambda: detectron2_m2f(), ["mask2former_swin_l_cityscapes", "eam_swin_l"]),
    ("m2f_swin_b.pth", lambda: detectron2_m2f(dim=128), ["mask2former_swin_b_cityscapes"]),
    ("m2f_swin_s.pth", lambda: detectron2_m2f(dim=96), ["mask2former_swin_s_cityscapes"]),
    ("m2f_swin_t.pth", lambda: detectron2_m2f(dim=96, depths=(2, 2, 6, 2)), ["mask2former_swin_t_cityscapes"]),
    ("m2f_r50.pth", lambda: detectron2_m2f("resnet", res4=6), ["mask2former_r50_cityscapes"]),
    ("m2f_r101.pth", lambda: detectron2_m2f("resnet", res4=23), ["mask2former_r101_cityscapes"]),
    ("rba_b.pth", lambda: detectron2_m2f(dim=128, dec_layers=1), ["rba_swin_b_1dl", "rba_swin_b_1dl_ood_coco"]),
    ("rba_l.pth", lambda: detectron2_m2f(dim=192, dec_layers=1), ["rba_swin_l_1dl", "rba_swin_l_1dl_ood_map_coco"]),
    ("uno.pth", lambda: detectron2_m2f(extra_rows=2), ["uno_swin_l"]),  # K + 2 rows: the negative class
    ("hf_tiny.bin", lambda: transformers_m2f(), ["mask2former_swin_tiny_cityscapes_hf"]),
    ("hf_large.bin", lambda: transformers_m2f(192, (2, 2, 18, 2)), ["mask2former_swin_large_cityscapes_hf"]),
    ("hrnet.pth", lambda: {"model.last_layer.3.weight": t(19, 720, 1, 1), "model.conv1.weight": t(64, 3, 3, 3),
                           "loss.criterion.weight": t(19)}, ["hrnetv2_w48_cityscapes"]),
    ("decoder_epoch_20.pth", lambda: {"ppm.0.1.weight": t(512, 2048, 1, 1), "conv_last.4.weight": t(13, 512, 1, 1)},
     ["caos_pspnet_streethazards"]),
    ("bdd_decoder.pth", lambda: {"ppm.0.1.weight": t(512, 2048, 1, 1), "conv_last.4.weight": t(17, 512, 1, 1)},
     ["caos_pspnet_bdd_anomaly"]),
    ("dinov2_vits14_pretrain.pth", lambda: dinov2(384, 12), ["dinov2_vits14"]),
    ("dinov2_vitb14_reg4_pretrain.pth", lambda: dinov2(768, 12, True), ["dinov2_vitb14_reg4"]),
    ("dinov2_vitl14_pretrain.pth", lambda: dinov2(1024, 24), ["dinov2_vitl14"]),
]


def test_every_zoo_entry_says_where_licence_config_and_numbers():
    names = [e.name for e in ZOO]
    assert len(names) == len(set(names))
    for e in ZOO:
        assert e.url and e.licence and e.config.startswith("backbone:") and e.published and e.source, e.name
    assert {"rba_swin_b_1dl", "uno_swin_l", "eam_swin_l", "mask2anomaly", "hrnetv2_w48_cityscapes",
            "caos_pspnet_streethazards", "dinov2_vitg14_reg4", "dinov3_vits16_lvd1689m"} <= set(names)


@pytest.mark.parametrize("name, make, expected", CASES, ids=[c[0] for c in CASES])
def test_zoo_check_identifies_each_release_layout(tmp_path, capsys, name, make, expected):
    path = tmp_path / name
    torch.save(make(), path)
    found, line = identify(path)
    assert sorted(e.name for e in found) == sorted(expected), line
    assert "\n" not in line and str(path) in line
    if len(expected) > 1:
        assert line.startswith(f"{path}: one of ") and "no hash is published to tell them apart" in line
    assert cli(["zoo", "check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == line


def test_a_published_hash_prefix_is_checked(tmp_path, monkeypatch):
    import anomseg.models.zoo as zoo

    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save(dinov3(384, 12), path)
    found, line = identify(path)
    assert [e.name for e in found] == ["dinov3_vits16_lvd1689m", "dinov3_vits16plus_lvd1689m"]  # one layout here
    assert "matches no published hash" in line and "08c60483" in line  # a random file is not the release
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = next(e for e in zoo.ZOO if e.name == "dinov3_vits16_lvd1689m")
    monkeypatch.setattr(zoo, "ZOO", [zoo.ZooEntry(**{**entry.__dict__, "sha256_prefix": digest[:8]})])
    found, line = identify(path)
    assert [e.name for e in found] == ["dinov3_vits16_lvd1689m"] and f"matches the published prefix {digest[:8]}" in line


@pytest.mark.parametrize("make, message", [
    (lambda p: torch.save(detectron2_m2f(dim=128, classes=13), p), "none of the released models; nearest"),
    (lambda p: torch.save({"fc.weight": t(10, 5)}, p), "none of the released models anomseg knows: unrecognised"),
    (lambda p: p.write_bytes(b"not a checkpoint"), "none of the released models anomseg knows"),
    (lambda p: np.save(p, np.zeros(3)), "none of the released models anomseg knows"),
])
def test_a_file_of_no_release_is_refused_in_one_line(tmp_path, capsys, make, message):
    path = tmp_path / "x.pth"
    make(path)
    assert cli(["zoo", "check", str(path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and message in out[0] and str(path) in out[0]


def test_zoo_lists_every_entry(capsys):
    assert cli(["zoo"]) == 0
    text = capsys.readouterr().out
    assert all(f"{e.name}: " in text for e in ZOO)
    assert "https://github.com/NazirNayal8/RbA/releases/download/model-weights/swin_b_1dl.zip" in text
