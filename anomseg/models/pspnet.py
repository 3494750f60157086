"""PSPNet on a dilated ResNet-101: the CSAIL semantic-segmentation-pytorch network used by CAOS.

Facts (../shared/docs/FORMATS.md; github.com/CSAILVision/semantic-segmentation-pytorch):

* encoder ``resnet101dilated``: deep stem ``conv1`` 3->64 stride 2, ``conv2`` 64->64, ``conv3``
  64->128 with ``bn1..3`` and a max-pool; ``layer1..4`` of Bottlenecks [3, 4, 23, 3]; layer3 and
  layer4 lose their stride and dilate (the first block of layer3 by 1, the rest by 2; the first
  block of layer4 by 2, the rest by 4): output stride 8;
* decoder ``ppm_deepsup``: ``ppm.{0..3}`` pool scales 1, 2, 3, 6, each adaptive pool, 1x1 conv
  2048->512 (no bias), BN, ReLU; ``conv_last`` = 3x3 conv 4096->512 (no bias), BN, ReLU,
  Dropout2d(0.1), 1x1 conv 512->C; deep supervision ``cbr_deepsup`` (3x3 conv 1024->512, BN, ReLU)
  and ``conv_last_deepsup`` (1x1 conv 512->C) on layer3;
* penultimate feature: the 512-d output of ``conv_last.0-3`` at stride 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.models.base import SegmentationBackbone, SegOutput


def conv3x3_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class DilatedResNet(nn.Module):
    """ResNet with the deep stem, layers ``blocks``, output stride 8 (see module docstring)."""

    def __init__(self, blocks=(3, 4, 23, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = 128
        self.layer1 = self._layer(64, blocks[0], stride=1, dilations=(1,) * blocks[0])
        self.layer2 = self._layer(128, blocks[1], stride=2, dilations=(1,) * blocks[1])
        self.layer3 = self._layer(256, blocks[2], stride=1, dilations=(1,) + (2,) * (blocks[2] - 1))
        self.layer4 = self._layer(512, blocks[3], stride=1, dilations=(2,) + (4,) * (blocks[3] - 1))

    def _layer(self, planes, n, stride, dilations):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, dilations[0], downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, 1, d) for d in dilations[1:]]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.maxpool(self.relu(self.bn3(self.conv3(x))))
        c3 = self.layer3(self.layer2(self.layer1(x)))
        return c3, self.layer4(c3)


class PPMDeepsup(nn.Module):
    """Pyramid pooling decoder with a deep-supervision branch (see module docstring)."""

    def __init__(self, num_classes: int, fc_dim: int = 2048, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(fc_dim, 512, 1, bias=False), nn.BatchNorm2d(512),
                          nn.ReLU(inplace=True)) for s in pool_scales
        )
        self.cbr_deepsup = conv3x3_bn_relu(fc_dim // 2, fc_dim // 4)
        self.conv_last = nn.Sequential(
            nn.Conv2d(fc_dim + len(pool_scales) * 512, 512, 3, padding=1, bias=False), nn.BatchNorm2d(512),
            nn.ReLU(inplace=True), nn.Dropout2d(0.1), nn.Conv2d(512, num_classes, 1),
        )
        self.conv_last_deepsup = nn.Conv2d(fc_dim // 4, num_classes, 1)
        self.dropout_deepsup = nn.Dropout2d(0.1)

    def forward(self, c3, c4, with_aux: bool):
        size = c4.shape[-2:]
        pyramid = [c4] + [F.interpolate(m(c4), size=size, mode="bilinear", align_corners=False) for m in self.ppm]
        feat = self.conv_last[3](self.conv_last[2](self.conv_last[1](self.conv_last[0](torch.cat(pyramid, 1)))))
        logits = self.conv_last[4](feat)
        aux = self.conv_last_deepsup(self.dropout_deepsup(self.cbr_deepsup(c3))) if with_aux else None
        return logits, feat, aux


class PSPNetR101(SegmentationBackbone):
    """PSPNet-ResNet101 (CSAIL layout): ``encoder`` + ``decoder``; 512-d features at stride 8.

    Args:
        num_classes: C (13 for a StreetHazards model, 17 for the CAOS BDD one).
        blocks: Bottleneck counts per layer (ResNet-101: 3, 4, 23, 3; smaller for tests).
    """

    feature_dim = 512
    stride = 8

    def __init__(self, num_classes: int, blocks=(3, 4, 23, 3)):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = DilatedResNet(tuple(blocks))
        self.decoder = PPMDeepsup(num_classes)

    def forward_normalized(self, x):
        c3, c4 = self.encoder(x)
        logits, feat, aux = self.decoder(c3, c4, with_aux=self.training)
        return SegOutput(logits, feat, aux)

    def classifier(self) -> nn.Module:
        return self.decoder.conv_last[4]
