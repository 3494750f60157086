"""``build_backbone``: one entry point for every backbone."""

from __future__ import annotations

from anomseg.errors import AnomsegError
from anomseg.models.base import SegmentationBackbone
from anomseg.models.dinov2 import DINOv2
from anomseg.models.hrnet import HRNetW48
from anomseg.models.mask2former import Mask2Former
from anomseg.models.pspnet import PSPNetR101
from anomseg.options import OptionError, check_options
from anomseg.models.smp_backbone import SMPBackbone

BACKBONES = {"hrnet_w48": HRNetW48, "pspnet_r101": PSPNetR101, "mask2former": Mask2Former, "dinov2": DINOv2}


class ModelError(AnomsegError, ValueError):
    """A backbone name, option or checkpoint does not fit."""


def build_backbone(name: str, num_classes: int, **options) -> SegmentationBackbone:
    """Build a backbone by name.

    Names: ``hrnet_w48``, ``pspnet_r101``, ``mask2former`` (options ``preset``, ``num_queries``,
    ``decoder_layers``, ``negative_class``; needs ``transformers``), ``dinov2`` (options ``preset``, ``layers``,
    ``decoder``, ``frozen``; ``dinov2:<preset>`` / ``dinov3:<preset>`` name the preset), or ``smp:<Arch>:<encoder>`` for any
    segmentation-models-pytorch model (e.g. ``smp:Unet:resnet18``, ``smp:FPN:tu-mobilenetv3_small_100``).
    The model returns :class:`~anomseg.models.base.SegOutput` (logits, features) on RGB uint8 or
    [0, 1] float batches.
    """
    model = _build(name, num_classes, **options)
    model.build_args = {"name": name, "num_classes": num_classes, "options": options}
    return model


def _build(name: str, num_classes: int, **options) -> SegmentationBackbone:
    if num_classes < 1:
        raise ModelError(f"num_classes={num_classes} must be positive")
    if name.startswith(("dinov2:", "dinov3:")):  # dinov2:vitb14_reg, dinov3:vits16 = dinov2 with that preset
        family, preset = name.split(":", 1)
        preset = preset if family == "dinov2" or preset.startswith("dinov3_") else "dinov3_" + preset
        if "preset" in options and options["preset"] != preset:
            raise ModelError(f"backbone {name!r} names preset {preset!r}, but options.preset is {options['preset']!r}")
        return _build("dinov2", num_classes, **{**options, "preset": preset})
    if name.startswith("smp:"):
        parts = name.split(":")
        if len(parts) != 3:
            raise ModelError(f"backbone {name!r}: write smp:<Arch>:<encoder>, e.g. smp:Unet:resnet18")
        try:
            return SMPBackbone(num_classes, arch=parts[1], encoder=parts[2], **options)
        except (KeyError, ValueError) as exc:
            raise ModelError(f"backbone {name!r}: {exc}") from None
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; valid: {', '.join(sorted(BACKBONES))}, smp:<Arch>:<encoder>")
    try:  # options checked against the constructor's declared types and ranges (one line each)
        options = check_options(f"backbone {name!r}", BACKBONES[name], options, skip=("num_classes",))
    except OptionError as exc:
        raise ModelError(str(exc)) from None
    try:
        return BACKBONES[name](num_classes, **options)
    except TypeError as exc:
        raise ModelError(f"backbone {name!r}: bad option ({exc})") from None
