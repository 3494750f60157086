"""HRNetV2-W48 with the head of the official HRNet-Semantic-Segmentation release.

Facts (../shared/docs/FORMATS.md; github.com/HRNet/HRNet-Semantic-Segmentation): the backbone's
key names match timm's ``hrnet_w48``; the 720-d feature is the four stage-4 branches (48 @ 1/4,
96 @ 1/8, 192 @ 1/16, 384 @ 1/32) bilinearly upsampled to 1/4 and concatenated; the head
``last_layer`` is 1x1 conv 720->720 (bias), BN, ReLU, 1x1 conv 720->K (bias).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from anomseg.models.base import SegmentationBackbone, SegOutput


class HRNetW48(SegmentationBackbone):
    """HRNetV2-W48 segmenter. Features: the 720-d concatenation at stride 4 (the head's input).

    ``features`` is the concatenated 720-d map, as in OpenGAN-fea; the head's hidden 720-d
    activation is available with ``feature_layer="head"``.
    """

    feature_dim = 720
    stride = 4

    def __init__(self, num_classes: int, feature_layer: str = "concat"):
        super().__init__()
        if feature_layer not in ("concat", "head"):
            raise ValueError(f"feature_layer={feature_layer!r}: choose 'concat' or 'head'")
        self.num_classes = num_classes
        self.feature_layer = feature_layer
        self.backbone = timm.create_model("hrnet_w48", pretrained=False, features_only=True,
                                          feature_location="", out_indices=(1, 2, 3, 4))
        self.last_layer = nn.Sequential(
            nn.Conv2d(720, 720, 1), nn.BatchNorm2d(720), nn.ReLU(inplace=True), nn.Conv2d(720, num_classes, 1)
        )

    def forward_normalized(self, x: torch.Tensor) -> SegOutput:
        # timm's fuse layers upsample by fixed factors, so the input must divide by 32 (720 does
        # not): pad bottom/right with zeros (the mean colour after normalisation), crop afterwards.
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % 32, (-W) % 32
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        branches = self.backbone(x)
        size = branches[0].shape[-2:]
        feat = torch.cat([branches[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=False)
                                          for b in branches[1:]], dim=1)
        hidden = self.last_layer[2](self.last_layer[1](self.last_layer[0](feat)))
        logits = self.last_layer[3](hidden)
        h, w = -(-H // 4), -(-W // 4)
        feat = feat if self.feature_layer == "concat" else hidden
        return SegOutput(logits[..., :h, :w], feat[..., :h, :w])

    def classifier(self) -> nn.Module:
        return self.last_layer if self.feature_layer == "concat" else self.last_layer[3]
