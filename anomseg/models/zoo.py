"""The released checkpoints anomseg loads, by name, and which of them a file is (``anomseg zoo``, ``zoo check``).

Every entry says where its publisher hosts it, its licence, its published hash where there is one, the backbone
config to use with it and the numbers its authors published, each from the source named in its ``source``. A
file is identified by its key layout and shapes (:func:`layout`: the format of
:func:`anomseg.models.formats.detect_format`, then class rows, backbone width and depth, decoder layers, queries,
registers) and, where the publisher states one, by its SHA-256 (torch.hub's convention for DINOv3's file names:
the hex part after the last ``-`` is a prefix of the file's SHA-256). Releases with one layout (a fine-tuned model
and the model it started from: RbA's inlier and outlier-tuned Swin-B, EAM's Swin-L and Mask2Former's) cannot be
told apart by layout; the answer then names every candidate and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from anomseg.files import file_digest

M2F = "https://dl.fbaipublicfiles.com/maskformer/mask2former/cityscapes/semantic"
M2F_SRC = "facebookresearch/Mask2Former MODEL_ZOO.md, Cityscapes semantic table (mIoU single-scale / ms+flip)"
RBA = "https://github.com/NazirNayal8/RbA/releases/download/model-weights"
#: RbA's "1dl" models: DEC_LAYERS 2, one transformer decoder layer (FORMATS.md)
RBA_CFG = {s: f"backbone: {{name: mask2former, options: {{preset: swin_{s}, decoder_layers: 2}}, checkpoint: "
              f"model_final.pth}}; methods: [{{name: rba}}]" for s in "bl"}
RBA_SRC = "NazirNayal8/RbA MODEL_ZOO.md (val AP / FPR95 on Road Anomaly and FS LaF); licence: its LICENSE, MIT"
OSM2F_SRC = "matejgrcic/Open-set-M2F README (Checkpoints; License: MIT for the majority, Deformable-DETR parts Apache-2.0)"
SMIYC_SRC = "SegmentMeIfYouCan leaderboard (../shared/docs/FORMATS.md), RoadAnomaly21 test AUPR / FPR95"
DINO_SRC = "facebookresearch/dinov2 README + hub/backbones.py (../shared/docs/FORMATS.md); Apache-2.0 code and weights"
DINO3_SRC = ("facebookresearch/dinov3 hub/backbones.py file names (../shared/docs/FORMATS.md); the DINOv3 License, "
             "weights after accepting it")


@dataclass(frozen=True)
class ZooEntry:
    """One released checkpoint. ``layout``: the facts of :func:`layout` a file of it has (every key must match)."""

    name: str
    title: str
    url: str
    licence: str
    config: str
    published: str
    source: str
    layout: dict = field(default_factory=dict)
    sha256_prefix: str | None = None


def _m2f(name, backbone, mid, miou, ms, layout):
    return ZooEntry(f"mask2former_{name}_cityscapes", f"Mask2Former {backbone}, Cityscapes semantic (detectron2 .pkl)",
                    f"{M2F}/maskformer2_{mid}/model_final_{miou[2]}.pkl", "MIT (Mask2Former LICENSE; Swin parts MIT)",
                    f"backbone: {{name: mask2former, options: {{preset: {name}}}, checkpoint: FILE}}",
                    f"Cityscapes val mIoU {miou[0]} / {ms} (ms+flip)",
                    M2F_SRC, {"format": "mask2former_detectron2", "classes": 19, "decoder_layers": 9, "queries": 100,
                              **layout})


SHORT = {"swin_tiny": "swin_t", "swin_small": "swin_s", "swin_base": "swin_b", "swin_large": "swin_l"}
M2F_MIOU = {"swin_tiny": "82.1", "swin_small": "82.6", "swin_base": "83.3", "swin_large": "83.3"}
SWIN = {"swin_t": {"backbone": "swin", "embed_dim": 96, "stage3_blocks": 6},
        "swin_s": {"backbone": "swin", "embed_dim": 96, "stage3_blocks": 18},
        "swin_b": {"backbone": "swin", "embed_dim": 128, "stage3_blocks": 18},
        "swin_l": {"backbone": "swin", "embed_dim": 192, "stage3_blocks": 18}}

ZOO: list[ZooEntry] = [
    # (the R50 / R101 releases, 79.4 / 80.1 mIoU, are not listed: anomseg has no ResNet-50 / 101 Mask2Former preset)
    _m2f("swin_t", "Swin-T", "swin_tiny_bs16_90k", ("82.1", None, "2d58d4"), "83.0", SWIN["swin_t"]),
    _m2f("swin_s", "Swin-S", "swin_small_bs16_90k", ("82.6", None, "fa26ae"), "83.6", SWIN["swin_s"]),
    _m2f("swin_b", "Swin-B (IN21k)", "swin_base_IN21k_384_bs16_90k", ("83.3", None, "1c6b65"), "84.5", SWIN["swin_b"]),
    _m2f("swin_l", "Swin-L (IN21k)", "swin_large_IN21k_384_bs16_90k", ("83.3", None, "17c1ee"), "84.3", SWIN["swin_l"]),
    *[ZooEntry(f"mask2former_{s}_cityscapes_hf", f"Mask2Former {s.replace('_', '-').title()}, Cityscapes semantic "
               f"(transformers)", f"https://huggingface.co/facebook/mask2former-{s.replace('_', '-')}-cityscapes-semantic",
               "the model card's (converted from the detectron2 release above)",
               f"backbone: {{name: mask2former, options: {{preset: {SHORT[s]}}}, checkpoint: FOLDER or its weights file}}",
               f"Cityscapes val mIoU {M2F_MIOU[s]} (the detectron2 release it was converted from)",
               "transformers convert_mask2former_original_pytorch_checkpoint_to_pytorch.py (../shared/docs/FORMATS.md)",
               {"format": "mask2former_transformers", "classes": 19, "decoder_layers": 9, "queries": 100,
                **SWIN[SHORT[s]]})
      for s in ("swin_tiny", "swin_small", "swin_base", "swin_large")],
    ZooEntry("rba_swin_b_1dl", "RbA Swin-B, one decoder layer, Cityscapes inliers only", f"{RBA}/swin_b_1dl.zip", "MIT",
             RBA_CFG["b"],
             "Cityscapes mIoU 82.25; Road Anomaly AP 78.45 / FPR95 11.83; FS LaF 60.96 / 10.63", RBA_SRC,
             {"format": "mask2former_detectron2", "classes": 19, "decoder_layers": 1, "queries": 100, **SWIN["swin_b"]}),
    ZooEntry("rba_swin_l_1dl", "RbA Swin-L, one decoder layer, Cityscapes inliers only", f"{RBA}/swin_l_1dl.zip", "MIT",
             RBA_CFG["l"],
             "Cityscapes mIoU 82.65; Road Anomaly AP 79.68 / FPR95 15.02; FS LaF 58.61 / 71.79", RBA_SRC,
             {"format": "mask2former_detectron2", "classes": 19, "decoder_layers": 1, "queries": 100, **SWIN["swin_l"]}),
    ZooEntry("rba_swin_b_1dl_ood_coco", "RbA Swin-B, class MLP fine-tuned with COCO outliers",
             f"{RBA}/swin_b_1dl_rba_ood_coco.zip", "MIT",
             RBA_CFG["b"],
             "Road Anomaly AP 85.42 / FPR95 6.92; FS LaF 70.81 / 6.30", RBA_SRC,
             {"format": "mask2former_detectron2", "classes": 19, "decoder_layers": 1, "queries": 100, **SWIN["swin_b"]}),
    ZooEntry("rba_swin_l_1dl_ood_map_coco", "RbA Swin-L, class MLP fine-tuned with Mapillary + COCO outliers",
             f"{RBA}/swin_l_1dl_rba_ood_map_coco.zip", "MIT",
             RBA_CFG["l"],
             "Road Anomaly AP 90.28 / FPR95 4.92; FS LaF 80.35 / 4.58", RBA_SRC,
             {"format": "mask2former_detectron2", "classes": 19, "decoder_layers": 1, "queries": 100, **SWIN["swin_l"]}),
    ZooEntry("eam_swin_l", "EAM: Mask2Former Swin-L (Cityscapes + Vistas) fine-tuned with ADE20K negatives",
             "Google Drive link in matejgrcic/Open-set-M2F README (Checkpoints, EAM)", "MIT",
             "backbone: {name: mask2former, options: {preset: swin_l}, checkpoint: FILE}; methods: [{name: eam}]",
             "RoadAnomaly21 test AUPR 93.7 / FPR95 4.1 (leaderboard)", f"{OSM2F_SRC}; {SMIYC_SRC}",
             {"format": "mask2former_detectron2", "classes": 19, "decoder_layers": 9, "queries": 100, **SWIN["swin_l"]}),
    ZooEntry("uno_swin_l", "UNO: Mask2Former Swin-L (Cityscapes + Vistas), K+2 classes, ADE20K negatives",
             "Google Drive link in matejgrcic/Open-set-M2F README (Checkpoints, UNO)", "MIT",
             "backbone: {name: mask2former, options: {preset: swin_l, negative_class: true}, checkpoint: FILE}; "
             "methods: [{name: uno}]",
             "RoadAnomaly21 test AUPR 96.3 / FPR95 2.0; RoadObstacle21 93.2 / 0.2 (leaderboard)", f"{OSM2F_SRC}; {SMIYC_SRC}",
             {"format": "mask2former_detectron2", "classes": 20, "decoder_layers": 9, "queries": 100, **SWIN["swin_l"]}),
    ZooEntry("mask2anomaly", "Mask2Anomaly (Rai et al.): Mask2Former fine-tuned with outliers, Cityscapes",
             "the checkpoint link of shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation's README "
             "(not verified here)", "see the repository (not verified here)",
             "backbone: {name: mask2former, options: {preset: swin_l}, checkpoint: FILE}; methods: [{name: m2a}] "
             "(Swin-L assumed, not verified)",
             "RoadAnomaly21 test AUPR 88.7 / FPR95 14.6; RoadObstacle21 93.2 / 0.2 (leaderboard)", SMIYC_SRC),
    ZooEntry("hrnetv2_w48_cityscapes", "HRNetV2-W48, Cityscapes 19 classes (OpenGAN's backbone): "
             "hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth", "the HRNet/HRNet-Semantic-Segmentation README "
             "(OneDrive / Baidu links)", "see the repository's LICENSE", "backbone: {name: hrnet_w48, checkpoint: FILE}; methods: [{name: opengan_fea, head: ...}]",
             "OpenGAN on it, Cityscapes test AUROC: OpenGAN-fea .885, CLS-fea .861, MSP .721",
             "../shared/docs/FORMATS.md (HRNet checkpoints; OpenGAN-fea as published)",
             {"format": "hrnet", "classes": 19}),
    ZooEntry("caos_pspnet_streethazards", "CAOS PSPNet (resnet101dilated + ppm_deepsup), StreetHazards 13 classes: "
             "encoder_epoch_20.pth + decoder_epoch_20.pth", "no released file: trained with the CSAIL code on the "
             "StreetHazards release (hendrycks/anomaly-seg README lists only the data)", "-",
             "backbone: {name: pspnet_r101, checkpoint: [encoder_epoch_20.pth, decoder_epoch_20.pth]}",
             "CAOS paper (arXiv 1911.11132), StreetHazards MSP: FPR95 33.7, AUROC 87.7, AUPR 6.6",
             "../shared/docs/FORMATS.md (CSAIL files: C = 13 StreetHazards, 17 BDD)",
             {"format": "csail_decoder", "classes": 13}),
    ZooEntry("caos_pspnet_bdd_anomaly", "CAOS PSPNet decoder, BDD-Anomaly 17 classes", "no released file (as above)",
             "-", "backbone: {name: pspnet_r101, checkpoint: [encoder, decoder]}", "-",
             "../shared/docs/FORMATS.md (CSAIL files)", {"format": "csail_decoder", "classes": 17}),
    ZooEntry("caos_pspnet_encoder", "CSAIL / CAOS resnet101dilated encoder (either dataset's)", "as its decoder",
             "-", "backbone: {name: pspnet_r101, checkpoint: [encoder, decoder]}", "-", "../shared/docs/FORMATS.md",
             {"format": "csail_encoder"}),
    *[ZooEntry(f"dinov2_{a}14{r}", f"DINOv2 ViT-{a[3:].upper()}/14{' with 4 registers' if r else ''} (torch.hub)",
               f"https://dl.fbaipublicfiles.com/dinov2/dinov2_{a}14/dinov2_{a}14{r}_pretrain.pth", "Apache-2.0",
               f"backbone: {{name: dinov2:{a}14{'_reg' if r else ''}, checkpoint: FILE}}", "-", DINO_SRC,
               {"format": "dinov2_official", "embed_dim": d, "depth": n, "registers": 4 if r else 0})
      for a, d, n in (("vits", 384, 12), ("vitb", 768, 12), ("vitl", 1024, 24), ("vitg", 1536, 40)) for r in ("", "_reg4")],
    *[ZooEntry(f"dinov3_{a}_{data}", f"DINOv3 {a} ({data})", f"dinov3_{a}_pretrain_{data}-{h}.pth (download after "
               f"accepting the DINOv3 License, facebookresearch/dinov3 README)", "DINOv3 License (not Apache)",
               f"backbone: {{name: dinov3:{a}, checkpoint: FILE}}", "-", DINO3_SRC,
               {"format": "dinov3_official", "embed_dim": d, "depth": n}, h)
      for a, data, h, d, n in (("vits16", "lvd1689m", "08c60483", 384, 12), ("vits16plus", "lvd1689m", "4057cbaa", 384, 12),
                               ("vitb16", "lvd1689m", "73cec8be", 768, 12), ("vitl16", "lvd1689m", "8aa4cbdd", 1024, 24),
                               ("vitl16", "sat493m", "eadcf0ff", 1024, 24), ("vith16plus", "lvd1689m", "7c1da9a5", 1280, 32),
                               ("vit7b16", "lvd1689m", "a955f4ea", 4096, 40), ("vit7b16", "sat493m", "a6675841", 4096, 40))],
]


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd for m in [rx.match(k)] if m})


def _rows(sd: dict, key: str):
    v = sd.get(key)
    return int(v.shape[0]) if v is not None and hasattr(v, "shape") and len(v.shape) else None


def layout(sd: dict, fmt: str) -> dict:
    """The facts of a state dict that tell the releases apart (format, classes, backbone, widths, depths)."""
    from anomseg.models.formats import strip

    out: dict = {"format": fmt}
    if fmt == "mask2former_detectron2":
        p = "sem_seg_head.predictor."
        rows = _rows(sd, p + "class_embed.weight")
        out.update(classes=None if rows is None else rows - 1, queries=_rows(sd, p + "query_feat.weight"),
                   decoder_layers=_count(sd, re.escape(p) + r"transformer_self_attention_layers\.(\d+)\."))
        if "backbone.patch_embed.proj.weight" in sd:
            out.update(backbone="swin", embed_dim=_rows(sd, "backbone.patch_embed.proj.weight"),
                       stage3_blocks=_count(sd, r"backbone\.layers\.2\.blocks\.(\d+)\."))
        else:
            out.update(backbone="resnet", res4_blocks=_count(sd, r"backbone\.res4\.(\d+)\."))
    elif fmt == "mask2former_transformers":
        e = "model.pixel_level_module.encoder."
        rows = _rows(sd, "class_predictor.weight")
        out.update(classes=None if rows is None else rows - 1, queries=_rows(sd, "model.transformer_module.queries_features.weight"),
                   decoder_layers=_count(sd, r"model\.transformer_module\.decoder\.layers\.(\d+)\."),
                   backbone="swin", embed_dim=_rows(sd, e + "embeddings.patch_embeddings.projection.weight"),
                   stage3_blocks=_count(sd, re.escape(e) + r"encoder\.layers\.2\.blocks\.(\d+)\."))
    elif fmt == "hrnet":
        sd = strip(sd, "model.")
        out["classes"] = _rows(sd, "last_layer.3.weight")
    elif fmt in ("csail_decoder", "csail_encoder"):
        sd = strip(sd, "decoder.") if fmt == "csail_decoder" else strip(sd, "encoder.")
        if fmt == "csail_decoder":
            out["classes"] = _rows(sd, "conv_last.4.weight")
    elif fmt in ("dinov2_official", "dinov3_official"):
        cls = sd.get("cls_token")
        out.update(embed_dim=int(cls.shape[-1]) if cls is not None else None, depth=_count(sd, r"blocks\.(\d+)\."))
        if fmt == "dinov2_official":
            reg = sd.get("register_tokens")
            out["registers"] = int(reg.shape[1]) if reg is not None else 0
    return out


def _describe(facts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in facts.items())


def identify(path) -> tuple[list[ZooEntry], str]:
    """(matching entries, one line saying what the file is, or is not and why) for a checkpoint file."""
    from anomseg.errors import AnomsegError
    from anomseg.models.formats import detect_format, read_file, state_of

    path = Path(path)
    try:
        obj = read_file(path)
        fmt = detect_format(obj)
    except (AnomsegError, ValueError, OSError) as exc:
        return [], f"{path}: none of the released models anomseg knows: {exc}"
    if fmt == "anomseg":
        return [], f"{path}: an anomseg checkpoint (written by anomseg, not a publisher's release); load it by path"
    sd = state_of(obj)
    facts = layout(sd, fmt)
    found = [e for e in ZOO if e.layout and all(facts.get(k) == v for k, v in e.layout.items())]
    if not found:
        same = [e for e in ZOO if e.layout.get("format") == fmt]
        near = min(same, key=lambda e: sum(facts.get(k) != v for k, v in e.layout.items()), default=None)
        diff = "" if near is None else "; nearest " + near.name + " has " + _describe(
            {k: v for k, v in near.layout.items() if facts.get(k) != v})
        return [], f"{path}: a {fmt} file ({_describe({k: v for k, v in facts.items() if k != 'format'})}) but none of " \
                   f"the released models{diff}"
    digest = file_digest(path)  # the first 16 hex digits: the published prefixes have 8
    hashed = [e for e in found if e.sha256_prefix]
    if hashed:
        match = [e for e in hashed if digest.startswith(e.sha256_prefix)]
        if match:
            return match, f"{path}: {match[0].name} ({match[0].title}); SHA-256 {digest[:12]}... matches the published " \
                          f"prefix {match[0].sha256_prefix}"
        return found, (f"{path}: the layout of {', '.join(e.name for e in found)} but SHA-256 {digest[:12]}... matches no "
                       f"published hash ({', '.join(e.sha256_prefix for e in hashed)}): a modified or converted copy, or "
                       f"another training run")
    if len(found) == 1:
        return found, f"{path}: {found[0].name} ({found[0].title}); layout {_describe(facts)}; no published hash to check"
    return found, (f"{path}: one of {', '.join(e.name for e in found)} (the same layout: {_describe(facts)}; they differ "
                   f"only in their weights and no hash is published to tell them apart)")


def listing() -> str:
    """``anomseg zoo``: every entry, a few lines each."""
    lines = []
    for e in ZOO:
        lines += [f"{e.name}: {e.title}", f"    where:     {e.url}", f"    licence:   {e.licence}",
                  f"    config:    {e.config}", f"    published: {e.published}"
                  + (f"\n    sha256:    {e.sha256_prefix}... (torch.hub file-name prefix)" if e.sha256_prefix else "")
                  + ("" if e.layout else "\n    layout:    not known here: `zoo check` cannot identify it"),
                  f"    source:    {e.source}"]
    return "\n".join(lines)
