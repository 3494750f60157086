"""Any segmentation-models-pytorch architecture and encoder, as a backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.models.base import SegmentationBackbone, SegOutput


class SMPBackbone(SegmentationBackbone):
    """``smp.create_model(arch, encoder_name=encoder, ...)``; features = the decoder output.

    Args:
        num_classes: K.
        arch: an smp architecture name (``Unet``, ``FPN``, ``DeepLabV3Plus``, ...).
        encoder: an smp encoder name (``resnet18``, ``tu-<timm name>``, ...).
        **smp_options: passed to ``smp.create_model`` (``encoder_depth``, ``decoder_channels``, ...).
            ``encoder_weights`` defaults to None: nothing is downloaded.
    """

    def __init__(self, num_classes: int, arch: str = "Unet", encoder: str = "resnet18", **smp_options):
        super().__init__()
        import segmentation_models_pytorch as smp

        smp_options.setdefault("encoder_weights", None)
        self.num_classes = num_classes
        self.arch, self.encoder_name = arch, encoder
        self.model = smp.create_model(arch, encoder_name=encoder, classes=num_classes, **smp_options)
        convs = [m for m in self.model.segmentation_head.modules() if isinstance(m, nn.Conv2d)]
        self.feature_dim = convs[0].in_channels
        self.stride = self._decoder_stride()

    def _decoder_stride(self) -> int:
        with torch.no_grad():
            was = self.training
            self.eval()
            x = torch.zeros(1, 3, 64, 64, device=self.pixel_mean.device)
            feat = self.model.decoder(self.model.encoder(x))
            self.train(was)
        return 64 // feat.shape[-1]

    def forward_normalized(self, x):
        """Any input size: smp's decoders need sides divisible by the encoder's output stride (32 for depth 5), so
        a frame of another size (a 1920x1080 phone frame) is zero-padded at the bottom / right (zero = the mean
        colour after normalisation) and the outputs cropped back: logits to (H, W), features to the cells covering
        the image (ceil(H / stride), ceil(W / stride)). Sizes already divisible run unpadded, unchanged."""
        h, w = x.shape[-2:]
        m = int(getattr(self.model.encoder, "output_stride", 32))
        hp, wp = -(-h // m) * m, -(-w // m) * m
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, wp - w, 0, hp - h))
        feat = self.model.decoder(self.model.encoder(x))
        logits = self.model.segmentation_head(feat)
        if (hp, wp) != (h, w):
            s = hp // feat.shape[-2]
            feat = feat[..., :-(-h // s), :-(-w // s)]
            logits = logits[..., :h, :w]
        return SegOutput(logits, feat)

    def classifier(self) -> nn.Module:
        return self.model.segmentation_head
