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
    # Mask2Former's R50 release: anomseg has no ResNet-50 Mask2Former preset, so it is no entry of the zoo
    (lambda p: torch.save(detectron2_m2f("resnet", res4=6), p), "none of the released models; nearest"),
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


def _config(entry) -> dict:
    """The backbone section of an entry's config text (``backbone: {...}; methods: [...]``), FILE -> ``path``."""
    import yaml

    return yaml.safe_load(entry.config.split(";")[0])["backbone"]


def test_a_full_rba_layout_file_is_identified_and_loads_strictly_with_its_entrys_config(tmp_path):
    """Every tensor of RbA's Swin-B one-decoder-layer model_final.pth, written key by key from FORMATS.md's detectron2
    layout (tests/test_mask2former.py ``detectron2_layout``) at the release's shapes: identified, and loaded by the
    config its entry gives, strictly (a missing or extra key, or another shape, would fail)."""
    from anomseg.models.checkpoints import backbone_from_config
    from anomseg.models.mask2former import Mask2Former
    from tests.test_mask2former import detectron2_layout

    ref = Mask2Former(19, preset="swin_b", decoder_layers=2)
    cfg = ref.config
    d2 = detectron2_layout(ref.net.state_dict(), cfg.backbone_config.depths, cfg.encoder_layers, cfg.decoder_layers - 1)
    d2 = {k: t(*v.shape) if v.is_floating_point() else v for k, v in d2.items()}
    for name, buf in ref.net.named_buffers():  # detectron2's Swin stores its relative position indices
        if name.endswith("relative_position_index"):
            i, j = name.split("encoder.layers.")[1].split(".blocks.")[0], name.split(".blocks.")[1].split(".")[0]
            d2[f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"] = buf.clone()
    d2["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    d2["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    path = tmp_path / "model_final.pth"
    torch.save({"model": d2}, path)
    found, line = identify(path)
    assert [e.name for e in found] == ["rba_swin_b_1dl", "rba_swin_b_1dl_ood_coco"], line
    spec = dict(_config(found[0]), checkpoint=str(path))
    model, _ = backbone_from_config(spec, 19)
    w = model.net.class_predictor.weight
    assert w.shape == (20, 256) and torch.all(w == d2["sem_seg_head.predictor.class_embed.weight"][0, 0])


def test_a_full_dinov2_file_is_identified_and_loads_with_its_entrys_config(tmp_path):
    """Every key of dinov2_vits14_pretrain.pth as FORMATS.md lists it (ViT-S: 384-d, 12 blocks, 6 heads)."""
    from anomseg.models.checkpoints import backbone_from_config

    D, sd = 384, {"cls_token": t(1, 1, 384), "pos_embed": t(1, 1370, 384), "mask_token": t(1, 384),
                  "patch_embed.proj.weight": t(384, 3, 14, 14), "patch_embed.proj.bias": t(384),
                  "norm.weight": t(384), "norm.bias": t(384)}
    for i in range(12):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": t(D), b + "norm1.bias": t(D), b + "attn.qkv.weight": t(3 * D, D),
                   b + "attn.qkv.bias": t(3 * D), b + "attn.proj.weight": t(D, D), b + "attn.proj.bias": t(D),
                   b + "ls1.gamma": t(D), b + "norm2.weight": t(D), b + "norm2.bias": t(D),
                   b + "mlp.fc1.weight": t(4 * D, D), b + "mlp.fc1.bias": t(4 * D), b + "mlp.fc2.weight": t(D, 4 * D),
                   b + "mlp.fc2.bias": t(D), b + "ls2.gamma": t(D)})
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    found, line = identify(path)
    assert [e.name for e in found] == ["dinov2_vits14"], line
    model, _ = backbone_from_config(dict(_config(found[0]), checkpoint=str(path)), 19)
    cls = [v for k, v in model.state_dict().items() if k.endswith("cls_token")]
    assert len(cls) == 1 and torch.all(cls[0] == sd["cls_token"][0, 0, 0])


def test_every_entrys_config_names_a_backbone_anomseg_builds():
    """Each entry's config builds (on the meta device: names and options checked, no memory spent)."""
    from anomseg.models.registry import build_backbone

    specs = {repr((s["name"], s.get("options"))): s for s in map(_config, ZOO)}  # each distinct backbone once
    for spec in specs.values():
        with torch.device("meta"):
            model = build_backbone(spec["name"], 19, **(spec.get("options") or {}))
        assert model.num_classes == 19, spec
