"""Mask2Former (Cheng et al., CVPR 2022) on Hugging Face ``transformers``: pure PyTorch, no compiled operators.

The network is ``transformers.Mask2FormerForUniversalSegmentation`` built from a config, never from the
hub. Its output is a :class:`~anomseg.models.base.SegOutput` whose

* ``queries`` are the per-query class logits (N, Q, K + 1) and mask logits (N, Q, Hp/4, Wp/4) of the
  last decoder layer (:class:`~anomseg.models.base.MaskQueries`);
* ``logits`` are the semantic aggregate S_c = sum_q softmax(z_q)(c) sigmoid(m_q) over the K known
  classes, in detectron2's order (``MaskFormer.forward`` + ``semantic_inference``, what RbA, EAM, UNO
  and Mask2Anomaly evaluate; ../shared/docs/FORMATS.md): mask logits upsampled bilinearly to the padded
  input, sigmoid, einsum, then cropped to the image: float32 (N, K, H, W), stride 1. So every pixel
  score and the evaluator work on it unchanged;
* ``features`` are the pixel decoder's per-pixel mask features (N, D, ceil(H/4), ceil(W/4)), stride 4:
  the bank and every head work on a Mask2Former too.

Inputs are normalised with the ImageNet mean / std (detectron2's PIXEL_MEAN 123.675, 116.28, 103.53 and
PIXEL_STD 58.395, 57.12, 57.375 on 0..255 RGB) and zero-padded at the bottom / right to a multiple of 32
(detectron2 ``ImageList.from_tensors(images, size_divisibility=32)``).

Presets (``preset=``): ``swin_t`` / ``swin_s`` / ``swin_b`` / ``swin_l`` are the released Cityscapes
semantic models (facebookresearch/Mask2Former ``configs/cityscapes/semantic-segmentation/swin/*.yaml``:
Swin embed 96 / 96 / 128 / 192, depths 2-2-6-2 / 2-2-18-2 / 2-2-18-2 / 2-2-18-2, heads 3 / 3 / 4 / 6
doubling per stage, window 7 / 7 / 12 / 12; 100 queries, hidden 256, 6 pixel-decoder layers,
DEC_LAYERS 10, feed-forward 2048; these are also ``transformers``' Mask2FormerConfig defaults).
``tiny`` is ours: a small Swin and decoder for tests and the demo, whose set loss samples 4096 points per
mask (3% of a 128 x 256 crop; the released recipe's 12544 are 2.4% of its 512 x 1024 crops). ``decoder_layers`` follows
detectron2's DEC_LAYERS (RbA's "1dl" models: 2, i.e. one transformer decoder layer).
``tiny_r18`` is the same head on a ResNet-18 encoder (transformers' ``ResNetBackbone``, basic blocks 2-2-2-2,
widths 64-128-256-512): the torchvision / smp ResNet-18 computed layer for layer, so a trained smp segmenter's
encoder starts it (:meth:`Mask2Former.load_resnet_encoder`, ``model.init_encoder`` in ``train_seg``), as the
released models start from a pretrained encoder. The demo trains it that way.
``negative_class=True`` gives the K + 2-class head UNO trains (class K = negatives).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.errors import AnomsegError
from anomseg.options import PositiveInt, Range
from anomseg.models.base import MaskQueries, SegmentationBackbone, SegOutput

SIZE_DIVISIBILITY = 32  # detectron2 MASK_FORMER.SIZE_DIVISIBILITY for the Cityscapes configs

_RELEASED = dict(num_queries=100, hidden_dim=256, feature_size=256, mask_feature_size=256, encoder_layers=6,
                 decoder_layers=10, dim_feedforward=2048, encoder_feedforward_dim=1024, num_attention_heads=8)
PRESETS = {
    "swin_t": ({"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7}, _RELEASED),
    "swin_s": ({"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24], "window_size": 7}, _RELEASED),
    "swin_b": ({"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 12}, _RELEASED),
    "swin_l": ({"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48], "window_size": 12}, _RELEASED),
    "tiny": ({"embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 7},
             dict(num_queries=20, hidden_dim=64, feature_size=64, mask_feature_size=64, encoder_layers=2,
                  decoder_layers=3, dim_feedforward=256, encoder_feedforward_dim=256, num_attention_heads=4,
                  train_num_points=4096)),
}
# torchvision's ResNet-18 (torchvision/models/resnet.py: BasicBlock, layers 2-2-2-2, stem 7x7/2 + max-pool 3x3/2)
RESNET18 = {"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2], "layer_type": "basic"}
PRESETS["tiny_r18"] = ({"resnet": RESNET18}, PRESETS["tiny"][1])
ENCODER = "model.pixel_level_module.encoder."
INSTALL_HINT = "pip install 'transformers>=4.46' (a dependency of anomseg; reinstall anomseg to get it)"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise AnomsegError(f"the mask2former backbone needs Hugging Face transformers, which is not installed: "
                           f"{INSTALL_HINT}") from None
    return transformers


def mask2former_config(num_labels: int, preset: str = "swin_t", num_queries: int | None = None,
                       decoder_layers: int | None = None, drop_path_rate: float = 0.3):
    """The ``transformers.Mask2FormerConfig`` of a preset for ``num_labels`` classes (no download)."""
    t = _transformers()
    if preset not in PRESETS:
        raise AnomsegError(f"mask2former preset {preset!r} is unknown; valid: {', '.join(PRESETS)}")
    encoder, head = PRESETS[preset]
    head = dict(head)
    if num_queries is not None:
        head["num_queries"] = int(num_queries)
    if decoder_layers is not None:
        if decoder_layers < 2:
            raise AnomsegError(f"mask2former decoder_layers={decoder_layers}: at least 2 (DEC_LAYERS, one transformer "
                               f"decoder layer per step after the first)")
        head["decoder_layers"] = int(decoder_layers)
    stages = ["stage1", "stage2", "stage3", "stage4"]
    if "resnet" in encoder:
        backbone = t.ResNetConfig(**encoder["resnet"], out_features=stages)
    else:
        backbone = t.SwinConfig(**encoder, drop_path_rate=drop_path_rate, out_features=stages)
    quiet = logging.getLogger("transformers.models.mask2former.configuration_mask2former")
    level, _ = quiet.level, quiet.setLevel(logging.ERROR)  # "Backbone resnet is not a supported model": it is,
    try:  # through the generic backbone API (feature maps of 4 stages); tested against torchvision's forward
        return t.Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels, use_pretrained_backbone=False, **head)
    finally:
        quiet.setLevel(level)


class Mask2Former(SegmentationBackbone):
    """A Mask2Former whose forward gives (semantic aggregate, mask features, queries); see the module docstring.

    Args:
        num_classes: K known classes.
        preset: ``tiny``, ``tiny_r18``, ``swin_t``, ``swin_s``, ``swin_b`` or ``swin_l``.
        num_queries: Q (default: the preset's).
        decoder_layers: detectron2's DEC_LAYERS (default: the preset's).
        negative_class: a K + 2-class head (UNO); class K is the negative class, never a known one.
        drop_path_rate: Swin's stochastic depth in training (detectron2 configs: 0.3).
    """

    stride = 4  # of the masks and features (the logits come at the input size)
    mask_classification = True

    def __init__(self, num_classes: int, preset: Literal["tiny", "tiny_r18", "swin_t", "swin_s", "swin_b", "swin_l"] = "swin_t",
                 num_queries: PositiveInt | None = None, decoder_layers: Annotated[int, Range(2)] | None = None,
                 negative_class: bool = False, drop_path_rate: Annotated[float, Range(0, 1)] = 0.3):
        super().__init__()
        t = _transformers()
        self.num_classes = num_classes
        self.negative_class = bool(negative_class)
        self.config = mask2former_config(num_classes + self.negative_class, preset, num_queries, decoder_layers,
                                         drop_path_rate)
        self.net = t.Mask2FormerForUniversalSegmentation(self.config)
        self.num_queries = self.config.num_queries
        self.feature_dim = self.config.mask_feature_size

    def classifier(self) -> nn.Module:
        """The class head (``class_predictor``: hidden -> K + 1 or K + 2), what RbA's outlier fine-tuning trains."""
        return self.net.class_predictor

    def encoder(self) -> nn.Module:
        """The image encoder (Swin or ResNet), what ``train.finetune: decoder`` keeps frozen."""
        return self.net.model.pixel_level_module.encoder

    def load_resnet_encoder(self, sd: dict, source: str) -> int:
        """Start a ``tiny_r18`` encoder from a torchvision-layout ResNet-18 state dict (``conv1``, ``bn1``,
        ``layer{i}.{j}.conv{1,2}`` / ``bn{1,2}`` / ``downsample.{0,1}``: smp's encoders, torchvision's resnet18),
        strictly: every encoder tensor from the file, every file tensor used. Returns the tensors loaded."""
        own = {k[len(ENCODER):]: v for k, v in self.net.state_dict().items() if k.startswith(ENCODER)}
        mapped = {}
        for key, value in sd.items():
            name = resnet_key(key)
            if name is None or name not in own or tuple(own[name].shape) != tuple(value.shape):
                raise AnomsegError(f"{source}: {key} {tuple(value.shape)} has no place in this Mask2Former's encoder "
                                   f"(preset {self.config.backbone_config.model_type}); init_encoder takes a ResNet-18 "
                                   f"encoder into preset tiny_r18")
            mapped[name] = value
        missing = sorted(set(own) - set(mapped))
        if missing:
            raise AnomsegError(f"{source}: {len(missing)} encoder tensors missing ({', '.join(missing[:3])}); "
                               f"give a ResNet-18 encoder")
        self.encoder().load_state_dict(mapped, strict=True)
        return len(mapped)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad (N, 3, H, W) at the bottom / right to multiples of 32."""
        h, w = x.shape[-2:]
        hp, wp = (math.ceil(h / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY, math.ceil(w / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY)
        return F.pad(x, (0, wp - w, 0, hp - h)) if (hp, wp) != (h, w) else x

    def forward(self, images: torch.Tensor, semantic: torch.Tensor | None = None, outlier: torch.Tensor | None = None):
        """RGB batch -> :class:`SegOutput`; with ``semantic`` (int64 (N, H, W) at the image size, 255 = void) and
        ``outlier`` (bool (N, H, W)): the transformers output of the training pass, its ``loss`` the set loss on
        the class masks of :func:`anomseg.train.mask_losses.class_masks` (the outliers the negative class when
        the head has one), ``auxiliary_logits`` every decoder layer's queries."""
        if semantic is None:
            return super().forward(images)
        from anomseg.train.mask_losses import class_masks

        x = self.pad(self.normalize(images))
        outlier = torch.zeros_like(semantic, dtype=torch.bool) if outlier is None else outlier
        masks, classes = class_masks(semantic, outlier, tuple(x.shape[-2:]), self.num_classes, self.negative_class)
        return self.net(pixel_values=x, mask_labels=masks, class_labels=classes, output_auxiliary_logits=True)

    def forward_normalized(self, x: torch.Tensor) -> SegOutput:
        h, w = x.shape[-2:]
        out = self.net(pixel_values=self.pad(x))
        padded = tuple(4 * s for s in out.masks_queries_logits.shape[-2:])
        q = MaskQueries(out.class_queries_logits, out.masks_queries_logits, (h, w), padded, self.num_classes)
        # detectron2's semantic path (mask logits upsampled to the padded input, sigmoid, einsum, crop): cropping
        # commutes with the pointwise steps, so this is the aggregate at the input size
        return SegOutput(q.semantic((h, w)), crop_features(out.pixel_decoder_last_hidden_state, (h, w)),
                         queries=q)


def resnet_key(key: str) -> str | None:
    """transformers' ``ResNetBackbone`` name of a torchvision ResNet key (basic blocks), or None."""
    m = re.fullmatch(r"(conv1|bn1)\.(.+)", key)
    if m:
        return f"embedder.embedder.{'convolution' if m[1] == 'conv1' else 'normalization'}.{m[2]}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)([12])\.(.+)", key)
    if m:
        part = "convolution" if m[3] == "conv" else "normalization"
        return f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[4]) - 1}.{part}.{m[5]}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(.+)", key)
    if m:
        part = "convolution" if m[3] == "0" else "normalization"
        return f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.{part}.{m[4]}"
    return None


def crop_features(features: torch.Tensor, input_size: tuple[int, int], stride: int = 4) -> torch.Tensor:
    """Stride-``stride`` features of a padded input cropped to the cells covering the image."""
    return features[..., :math.ceil(input_size[0] / stride), :math.ceil(input_size[1] / stride)]
