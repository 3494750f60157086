"""Loading the checkpoints users already have, and saving our own.

Each format lives in its own module under :mod:`anomseg.models.formats` (how it is recognised, converted and
refused); this module holds the entry points: :func:`load_checkpoint` (any format, detected, loaded
strictly), :func:`save_checkpoint` / :func:`build_from_checkpoint` (ours), :func:`load_pretrained` (ImageNet
initialisation for training) and :func:`backbone_from_config` (a config's ``backbone`` section).

Files are read with ``torch.load(..., weights_only=True)`` (a model-zoo ``.pkl``: numpy arrays only), keys
remapped, and loaded strictly: a mismatch raises :class:`ModelError` naming the missing and unexpected keys
and the class count the file was trained for.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from anomseg.errors import AnomsegError
from anomseg.models.base import SegmentationBackbone
from anomseg.models.formats import (HEAD_KEYS, csail, detect_format, detectron2, dinov2, hrnet, load_strict, mismatch,
                                    own,
                                    read_file, state_of, strip, transformers)
from anomseg.models.formats.own import save_checkpoint
from anomseg.models.registry import ModelError, build_backbone

log = logging.getLogger(__name__)

BN_MODES = hrnet.BN_MODES

__all__ = ["load_checkpoint", "save_checkpoint", "build_from_checkpoint", "backbone_from_config", "load_pretrained",
           "detect_format", "grow_negative_class", "init_encoder", "BN_MODES"]


def load_checkpoint(model: SegmentationBackbone, path_or_paths, bn: str = "auto") -> dict:
    """Load a checkpoint into ``model`` strictly, auto-detecting its format.

    Args:
        path_or_paths: one file (any format of :mod:`anomseg.models.formats`, or one half of a CSAIL pair whose
            other half lies beside it), an (encoder, decoder) pair, a folder holding a CSAIL pair, or a
            transformers release folder (``config.json`` + weights).
        bn: HRNet files only: ``"auto"`` (no ``num_batches_tracked`` key = a master-branch InPlaceABN
            file), ``"inplace_abn"`` (convert BN weights to ``|gamma| + eps``) or ``"batchnorm"``.
    Returns:
        ``{"format": ..., "num_classes": ..., "source": ..., "bn": ...}`` (plus ``config`` and ``backbone`` for
        our format); ``bn`` says which normalisation the file was read as (None for non-HRNet files).
    """
    if bn not in BN_MODES:
        raise ModelError(f"bn={bn!r}: choose one of {', '.join(BN_MODES)}")
    pair = isinstance(path_or_paths, (list, tuple))
    if not pair and dinov2.recognise_folder(Path(path_or_paths)):
        return dinov2.load_folder(model, Path(path_or_paths), dinov2.recognise_folder(Path(path_or_paths)))
    if not pair and transformers.recognise_folder(Path(path_or_paths)):
        return transformers.load_folder(model, Path(path_or_paths))
    obj, fmt, bn_mode = None, csail.NAME, None
    if not pair and not Path(path_or_paths).is_dir():
        obj = read_file(Path(path_or_paths))
        source = str(path_or_paths)
        if isinstance(state_of(obj), dict):
            check_tensors(state_of(obj), source)
        fmt = detect_format(obj)
    if fmt in (dinov2.NAME, dinov2.NAME_V3):  # encoder-only files: the decoder keeps its initialisation
        return dinov2.load(model, state_of(obj), source, v3=fmt == dinov2.NAME_V3)
    if fmt.startswith(csail.NAME):  # either half, a pair or a folder: both halves
        enc, dec = csail.pair(path_or_paths)
        fmt, source = csail.NAME, f"{enc} + {dec}"
        sd = csail.convert(read_file(enc), read_file(dec))
    elif fmt == hrnet.NAME:
        sd, bn_mode = hrnet.convert(model, obj, source, bn)
    elif fmt == detectron2.NAME:
        sd = detectron2.convert(model, state_of(obj), source)
    elif fmt == transformers.NAME:
        sd = transformers.convert(model, state_of(obj), source)
    else:
        sd = own.convert(obj)
    if fmt == own.NAME:  # our files say how their head was built: a UNO head (K + 2 rows) is not K + 1 classes
        options = (obj.get("backbone") or {}).get("options") or {}
        if options.get("negative_class") and not getattr(model, "negative_class", False):
            raise ModelError(f"{source}: holds a UNO head (a negative class: K + 2 rows) but the model was built "
                             f"without one, so the negative row would become known class K; build it with backbone "
                             f"option negative_class: true (or give the checkpoint alone: it rebuilds its model)")
    grown = False
    if getattr(model, "negative_class", False):
        before = sd
        sd = grow_negative_class(sd, model, source)
        grown = sd is not before
    model.negative_row_untrained = grown  # UNO's score on an untrained zero row would mean nothing (methods refuse)
    load_strict(model, sd, source, HEAD_KEYS.get(fmt))
    info = {"format": fmt, "num_classes": getattr(model, "num_classes", None), "source": source, "bn": bn_mode}
    if fmt == own.NAME:
        info["config"] = obj.get("config", {})
        info["backbone"] = obj.get("backbone")
    return info


def check_tensors(sd: dict, source: str) -> None:
    """Every entry of a state dict a string name and a tensor, else one ModelError naming the first that is not."""
    for k, v in sd.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            what = "not named by a string" if not isinstance(k, str) else f"a {type(v).__name__}, not a tensor"
            raise ModelError(f"{source}: state dict entry {k!r} is {what}; a checkpoint's weights are tensors under "
                             f"string names: is it the right file?")


def grow_negative_class(sd: dict, model, source: str) -> dict:
    """A K + 1-class Mask2Former file for a model with UNO's K + 2-class head: the negative class's row is
    inserted before "no object", zero weight and bias, and its no-object loss weight 1
    (matejgrcic/Open-set-M2F ``finetune_UNO.py``); a K + 2-class file is returned as it is."""
    key = "net.class_predictor.weight"
    if key not in sd or sd[key].shape[0] != model.num_classes + 1:
        return sd
    sd = dict(sd)
    for name in (key, "net.class_predictor.bias"):
        w = sd[name]
        sd[name] = torch.cat([w[:-1], torch.zeros_like(w[:1]), w[-1:]])
    e = sd.get("net.criterion.empty_weight")
    if e is not None:
        sd["net.criterion.empty_weight"] = torch.cat([e[:-1], torch.ones_like(e[:1]), e[-1:]])
    log.warning("%s: K + 1-class head grown to UNO's K + 2 (an untrained zero row for the negative class: train it "
                "with train_seg loss uno before scoring with uno)", source)
    return sd


#: ImageNet files for training initialisation, per backbone: what to drop, and where the rest goes in our model
PRETRAINED = {"hrnet_w48": hrnet.PRETRAINED, "pspnet_r101": csail.PRETRAINED}


def load_pretrained(model: SegmentationBackbone, name: str, path: str | Path) -> dict:
    """Initialise the backbone part of ``model`` (built as ``name``) from an ImageNet classification file.

    Strict on the backbone part: every backbone tensor must come from the file with its shape, and
    the file may hold nothing else but the classification head (dropped). The segmentation head
    keeps its initialisation. Returns ``{"loaded": n, "dropped": m, "source": path}``.
    """
    if name == "dinov2" or name.startswith(("dinov2:", "dinov3:")):  # the released encoder files (formats.dinov2)
        info = load_checkpoint(model, path)
        if info["format"] not in (dinov2.NAME, dinov2.NAME_V3, dinov2.NAME_HF):
            raise ModelError(f"{path}: model.pretrained of a dinov2 backbone takes a released DINOv2 / DINOv3 encoder "
                             f"file or transformers folder, not a {info['format']} file")
        return {"loaded": sum(1 for k in model.state_dict() if k.startswith("encoder.")), "dropped": 0,
                "source": str(path)}
    if name not in PRETRAINED:
        raise ModelError(f"model.pretrained: no ImageNet initialisation is defined for backbone {name!r} "
                         f"(defined for {', '.join(PRETRAINED)}); smp models take encoder_weights in model.options")
    spec, path = PRETRAINED[name], Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ImageNet file not found; download {spec['file']} and set model.pretrained to it")
    obj = read_file(path)
    sd = strip(obj.get("state_dict", obj) if isinstance(obj, dict) else {}, "module.")
    kept = {spec["prefix"] + k: v for k, v in sd.items()
            if not k.startswith(spec["drop"]) and not k.endswith(csail.SYNCBN_EXTRA)}
    dropped = len(sd) - len(kept)
    own_part = {k: v for k, v in model.state_dict().items() if spec["part"](k)}
    missing, unexpected, shapes = mismatch(own_part, kept)
    if missing or unexpected or shapes:
        raise ModelError(f"{path}: not an ImageNet {name} file ({len(missing)} missing keys {missing[:3]}, "
                         f"{len(unexpected)} unexpected {unexpected[:3]}, {len(shapes)} shape mismatches {shapes[:2]}); "
                         f"expected {spec['file']}")
    model.load_state_dict(kept, strict=False)
    log.info("%s: ImageNet initialisation of %s (%d tensors, %d head tensors dropped)", path, name, len(kept), dropped)
    return {"loaded": len(kept), "dropped": dropped, "source": str(path)}


def init_encoder(model, path: str | Path) -> int:
    """Start ``model``'s encoder from the encoder of an anomseg checkpoint of an smp ResNet-18 segmenter (its
    ``model.encoder.*`` tensors; a Mask2Former ``tiny_r18`` takes them, :meth:`Mask2Former.load_resnet_encoder`).
    Returns the number of tensors loaded."""
    obj = read_file(Path(path))
    if detect_format(obj) != own.NAME:
        raise ModelError(f"{path}: model.init_encoder takes an anomseg checkpoint of an smp ResNet segmenter")
    sd = {k[len("model.encoder."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.encoder.")}
    if not sd or not hasattr(model, "load_resnet_encoder"):
        raise ModelError(f"{path}: model.init_encoder needs an smp ResNet segmenter's checkpoint ({len(sd)} encoder "
                         f"tensors) and a backbone with a ResNet encoder (mask2former preset tiny_r18), not "
                         f"{type(model).__name__}")
    try:
        n = model.load_resnet_encoder(sd, str(path))
    except AnomsegError as exc:
        raise ModelError(str(exc)) from None
    log.info("%s: encoder initialised from it (%d tensors)", path, n)
    return n


def build_from_checkpoint(path: str | Path) -> tuple[SegmentationBackbone, dict]:
    """Rebuild a model saved by :func:`save_checkpoint` and load its weights."""
    obj = read_file(Path(path))
    if detect_format(obj) != own.NAME or not obj.get("backbone"):
        raise ModelError(f"{path}: not an anomseg checkpoint; build the backbone yourself and call load_checkpoint")
    args = obj["backbone"]
    model = build_backbone(args["name"], args["num_classes"], **args.get("options", {}))
    return model, load_checkpoint(model, path)


def backbone_from_config(b: dict, num_classes: int):
    """The backbone a config section names: ``{checkpoint}`` alone (an anomseg checkpoint), or
    ``{name, options, checkpoint}`` with a checkpoint in any supported format. Returns (model, name)."""
    if b.get("bn", "auto") not in BN_MODES:  # checked whatever the file turns out to be
        raise ModelError(f"backbone.bn={b['bn']!r}: choose one of {', '.join(BN_MODES)} (it applies to HRNet files)")
    if b.get("checkpoint") and not b.get("name"):
        model, info = build_from_checkpoint(b["checkpoint"])
        return model, info["backbone"]["name"]
    if not b.get("name"):
        raise ModelError("backbone.name or backbone.checkpoint (an anomseg checkpoint) must be given")
    model = build_backbone(b["name"], num_classes, **b.get("options", {}))
    if b.get("checkpoint"):
        load_checkpoint(model, b["checkpoint"], bn=b.get("bn", "auto"))
    return model, b["name"]
