"""Format ``hrnet``: HRNet-Semantic-Segmentation releases (e.g. ``hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth``)
and its ImageNet initialisation (HRNet-Image-Classification's ``hrnetv2_w48_imagenet_pretrained.pth``).

Recognised by keys prefixed ``model.`` (the training wrapper ``FullModel``), a ``loss.criterion.weight`` key
(the loss's class weights, dropped) or ``last_layer.*``; sometimes wrapped as ``{"state_dict": ...}``.
Master-branch files (no ``num_batches_tracked`` key, PyTorch 0.4.1) were trained with InPlaceABNSync, whose
affine step is ``(|gamma| + eps) * x_hat + beta`` (eps 1e-5, ../shared/docs/FORMATS.md): their BN weights are
converted to ``|gamma| + eps`` (``bn="auto"`` detects them; ``"inplace_abn"`` / ``"batchnorm"`` force a choice).
"""

from __future__ import annotations

import logging

import torch

from anomseg.models.formats.common import strip
from anomseg.models.registry import ModelError

log = logging.getLogger(__name__)

NAME = "hrnet"
HEAD_KEY = "last_layer.3.weight"
BN_MODES = ("auto", "inplace_abn", "batchnorm")
INPLACE_ABN_EPS = 1e-5  # InPlaceABNSync's default eps (HRNet-Semantic-Segmentation master, FORMATS.md)
# HRNet/HRNet-Image-Classification lib/models/cls_hrnet.py: the segmentation network's backbone keys plus a
# classification head, dropped when the file initialises training
PRETRAINED = {"drop": ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier."), "prefix": "",
              "part": lambda k: not k.startswith("last_layer."),
              "file": "hrnetv2_w48_imagenet_pretrained.pth (HRNet-Image-Classification)"}


def recognise(sd: dict) -> bool:
    return any(k.startswith(("model.", "last_layer.")) for k in sd) or "loss.criterion.weight" in sd


def convert(model, obj: dict, source: str, bn: str = "auto") -> tuple[dict, str]:
    """(state dict under our names, the BN mode the file was read as)."""
    sd = obj.get("state_dict", obj)
    sd = strip(strip(sd, "module."), "model.")
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    mode = resolve_bn(bn, sd)
    if mode == "inplace_abn":
        n = convert_inplace_abn(sd, model)
        log.warning("%s: read as an InPlaceABN file (%s): %d BN weights converted to |gamma| + %g", source,
                    "no num_batches_tracked keys" if bn == "auto" else "bn=inplace_abn", n, INPLACE_ABN_EPS)
    else:
        log.info("%s: read as a BatchNorm file (%s)", source, "has num_batches_tracked" if bn == "auto" else "bn=batchnorm")
    return sd, mode


def resolve_bn(bn: str, sd: dict) -> str:
    if bn not in BN_MODES:
        raise ModelError(f"bn={bn!r}: choose one of {', '.join(BN_MODES)}")
    if bn != "auto":
        return bn
    # Master-branch files (PyTorch 0.4.1, InPlaceABNSync) have no num_batches_tracked key at all;
    # pytorch-v1.1 files (nn.BatchNorm2d / SyncBatchNorm) have one per BN layer.
    return "batchnorm" if any(k.endswith("num_batches_tracked") for k in sd) else "inplace_abn"


def convert_inplace_abn(sd: dict, model: torch.nn.Module) -> int:
    """Turn InPlaceABN affine weights into BatchNorm ones in place: ``weight := |gamma| + eps``.

    InPlaceABN computes ``(x - mean) / sqrt(var + eps) * (|gamma| + eps) + beta`` (FORMATS.md), so this
    makes a plain BatchNorm2d compute the same. Returns the number of BN layers converted.
    """
    n = 0
    for prefix, m in model.named_modules():
        key = f"{prefix}.weight"
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and key in sd:
            sd[key] = sd[key].abs() + INPLACE_ABN_EPS
            n += 1
    return n
