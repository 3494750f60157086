"""HRNetV2-W48 exactly as HRNet-Semantic-Segmentation releases it (our own module, official key names).

Facts (../shared/docs/FORMATS.md; HRNet/HRNet-Semantic-Segmentation ``lib/models/seg_hrnet.py`` and
``experiments/cityscapes/seg_hrnet_w48_*.yaml``, read for facts only):

* stem: ``conv1`` 3->64 3x3 stride 2, ``bn1``, ReLU, ``conv2`` 64->64 3x3 stride 2, ``bn2``, ReLU;
  ``layer1``: 4 Bottlenecks (64 planes, expansion 4, ``downsample`` on the first);
* stages 2 / 3 / 4: 1 / 4 / 3 high-resolution modules of 2 / 3 / 4 branches, each branch 4 BasicBlocks,
  widths 48, 96, 192, 384; ``transitionN`` adapts the previous stage's branches (3x3 conv + BN + ReLU
  where the width changes, nothing where it does not) and makes the new branch from the LAST
  previous branch with a 3x3 stride-2 conv + BN + ReLU;
* fuse layer ``fuse_layers[i][j]`` brings branch j to branch i: j > i a 1x1 conv + BN, then
  ``F.interpolate(size=<exact size of branch i>, mode="bilinear", align_corners=False)``; j < i a
  chain of i - j 3x3 stride-2 convs + BN (ReLU between, not after the last); the sum is ReLU'd.
  This is where timm's ``hrnet_w48`` differs (``nn.Upsample(scale_factor=2**k, mode="nearest")``,
  which also needs input sizes divisible by 32): same keys, another network;
* the 720-d feature: the four stage-4 branches, bilinearly upsampled to branch 0 (stride 4) and
  concatenated; head ``last_layer`` = 1x1 conv 720->720 (bias), BN, ReLU, 1x1 conv 720->K (bias).

Any input size works with no padding (stride-2 convs give ceil(n / 2); upsampling goes to the exact
target size), as in the official network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.models.base import SegmentationBackbone, SegOutput

WIDTHS = (48, 96, 192, 384)   # HRNetV2-W48 branch widths
STAGE_MODULES = (1, 4, 3)     # high-resolution modules in stages 2, 3, 4
BLOCKS_PER_BRANCH = 4
# Keys of the classification head of HRNet-Image-Classification files (ImageNet pretraining):
# not part of the segmentation network (HRNet/HRNet-Image-Classification lib/models/cls_hrnet.py).
IMAGENET_HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a residual (keys ``conv1, bn1, conv2, bn2``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 / 3x3 / 1x1 conv + BN, expansion 4 (keys ``conv1..3, bn1..3, downsample.0/1``)."""

    def __init__(self, cin: int, planes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _conv_bn(cin, planes * 4, 1, relu=False) if cin != planes * 4 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then every branch fused into every other (keys
    ``branches.i.b.*`` and ``fuse_layers.i.j.*``)."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*[BasicBlock(c) for _ in range(BLOCKS_PER_BRANCH)]) for c in widths)
        self.fuse_layers = nn.ModuleList()
        for i, ci in enumerate(widths):
            row = nn.ModuleList()
            for j, cj in enumerate(widths):
                if j > i:
                    row.append(_conv_bn(cj, ci, 1, relu=False))
                elif j == i:
                    row.append(None)
                else:  # i - j stride-2 3x3 convs: width cj until the last, which maps to ci
                    row.append(nn.Sequential(*[_conv_bn(cj, ci if k == i - j - 1 else cj, 3, 2, relu=k < i - j - 1)
                                               for k in range(i - j)]))
            self.fuse_layers.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    y = y + F.interpolate(row[j](xs[j]), size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                else:
                    y = y + row[j](xs[j])
            fused.append(F.relu(y))
        return fused


def _transition(prev: tuple[int, ...], cur: tuple[int, ...]) -> nn.ModuleList:
    """Existing branches: 3x3 conv where the width changes, else None; the new branch: a stride-2
    3x3 conv from the last previous branch (nested one level, as the official keys are)."""
    layers = nn.ModuleList()
    for i, c in enumerate(cur):
        if i < len(prev):
            layers.append(_conv_bn(prev[i], c, 3) if prev[i] != c else None)
        else:
            layers.append(nn.Sequential(_conv_bn(prev[-1], c, 3, 2)))
    return layers


class HRNetW48(SegmentationBackbone):
    """HRNetV2-W48 segmenter (official forward). Features: the 720-d concatenation at stride 4.

    ``forward`` takes uint8 (N, H, W, 3) / float (N, 3, H, W) in [0, 1] of any H x W and returns
    logits float (N, K, ceil(H/4), ceil(W/4)) and features float (N, 720, same). With
    ``feature_layer="head"`` the features are the head's hidden 720-d activation instead.
    """

    feature_dim = 720
    stride = 4

    def __init__(self, num_classes: int, feature_layer: str = "concat"):
        super().__init__()
        if feature_layer not in ("concat", "head"):
            raise ValueError(f"feature_layer={feature_layer!r}: choose 'concat' or 'head'")
        self.num_classes = num_classes
        self.feature_layer = feature_layer
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(Bottleneck(64, 64), *[Bottleneck(256, 64) for _ in range(3)])
        prev = (256,)
        for n, modules in enumerate(STAGE_MODULES, 2):
            cur = WIDTHS[:n]
            setattr(self, f"transition{n - 1}", _transition(prev, cur))
            setattr(self, f"stage{n}", nn.Sequential(*[HighResolutionModule(cur) for _ in range(modules)]))
            prev = cur
        c = sum(WIDTHS)
        self.last_layer = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                        nn.Conv2d(c, num_classes, 1))

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ImageNet-normalised (N, 3, H, W) -> the four stage-4 branch outputs (strides 4, 8, 16, 32)."""
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        xs = [self.layer1(x)]
        for n in (2, 3, 4):
            transition = getattr(self, f"transition{n - 1}")
            xs = [t(xs[-1] if i >= len(xs) else xs[i]) if t is not None else xs[i] for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{n}")(xs)
        return xs

    def forward_normalized(self, x: torch.Tensor) -> SegOutput:
        xs = self.branches(x)
        size = xs[0].shape[-2:]
        feat = torch.cat([xs[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in xs[1:]], 1)
        hidden = self.last_layer[2](self.last_layer[1](self.last_layer[0](feat)))
        logits = self.last_layer[3](hidden)
        return SegOutput(logits, feat if self.feature_layer == "concat" else hidden)

    def classifier(self) -> nn.Module:
        return self.last_layer if self.feature_layer == "concat" else self.last_layer[3]
