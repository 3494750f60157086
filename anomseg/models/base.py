"""What every backbone shares: input normalisation and the (logits, features) output."""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics (RGB, on [0, 1] inputs), as the HRNet and CSAIL releases normalise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MaskQueries(NamedTuple):
    """What a mask-classification network (Mask2Former) predicts per query, before any aggregation.

    Attributes:
        class_logits: float (N, Q, C) over C = K + 1 classes (the last is "no object"; a head with a
            negative class has C = K + 2, the class K being the negative class).
        mask_logits: float (N, Q, h, w) at 1/4 of the padded input.
        input_size: (H, W) of the image inside the padded input (its top-left corner).
        padded_size: (Hp, Wp) of the padded input the network ran on.
        known: K, the number of known classes.
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    known: int

    def mask_logits_at(self, size: tuple[int, int]) -> torch.Tensor:
        """float32 (N, Q, *size): the mask logits bilinearly upsampled (align_corners=False) to the padded
        input, cropped to the image, resized to ``size`` (detectron2 ``sem_seg_postprocess``)."""
        m = F.interpolate(self.mask_logits.float(), size=tuple(self.padded_size), mode="bilinear", align_corners=False)
        m = m[..., :self.input_size[0], :self.input_size[1]]
        return resize_logits(m, tuple(size))

    def semantic(self, size: tuple[int, int]) -> torch.Tensor:
        """The semantic aggregate S_c = sum_q softmax(z_q)(c) sigmoid(m_q) over the K known classes at ``size``
        (mask logits as :meth:`mask_logits_at` brings them): float32 (N, K, *size)."""
        p = torch.softmax(self.class_logits.float(), -1)[..., :self.known]
        return torch.einsum("nqc,nqhw->nchw", p, torch.sigmoid(self.mask_logits_at(size)))


class SegOutput(NamedTuple):
    """A backbone's forward result.

    Attributes:
        logits: float (N, K, h, w) class scores at the backbone's output stride (a mask-classification
            network: the semantic aggregate at the input size, stride 1).
        features: float (N, D, h', w') penultimate per-pixel features (the classifier's input; a
            Mask2Former: the pixel decoder's mask features).
        aux: float (N, K, h'', w'') deep-supervision logits in training mode (PSPNet), else None.
        queries: :class:`MaskQueries` of a mask-classification network, else None.
    """

    logits: torch.Tensor
    features: torch.Tensor
    aux: torch.Tensor | None = None
    queries: MaskQueries | None = None

    def grid_logits(self) -> torch.Tensor:
        """float32 (N, K, h', w'): the logits on the features' grid, bilinearly resized when they are at another
        resolution (what the feature bank stores beside each row and what logit-reading heads are scored with)."""
        return resize_logits(self.logits.float(), tuple(self.features.shape[-2:]))


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) / (N, 3, H, W) or float (N, 3, H, W) in [0, 1] -> float (N, 3, H, W) in [0, 1].

    uint8 becomes float32; a floating batch keeps its dtype (the backbone casts to its own).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (N, 3, H, W) or (N, H, W, 3); got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if images.shape[1] != 3 and images.shape[-1] == 3:
            images = images.permute(0, 3, 1, 2)
        return images.float().div_(255.0)
    if images.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W) RGB in [0, 1]; got shape {tuple(images.shape)}")
    return images if images.is_floating_point() else images.float()


class SegmentationBackbone(nn.Module, abc.ABC):
    """Base class: normalises RGB input, then ``forward_normalized`` gives a :class:`SegOutput`.

    Subclasses set ``num_classes``, ``feature_dim`` and ``stride`` (``mask_classification`` when their output
    carries :class:`MaskQueries`) and implement
    ``forward_normalized(x)`` on ImageNet-normalised float (N, 3, H, W).
    """

    num_classes: int
    feature_dim: int
    stride: int
    mask_classification = False  # True: the output carries MaskQueries (Mask2Former)

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB batch (see :func:`to_model_input`) -> ImageNet-normalised float (N, 3, H, W) on the backbone's
        device and dtype."""
        x = to_model_input(images).to(self.pixel_mean)
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> SegOutput:
        return self.forward_normalized(self.normalize(images))

    @abc.abstractmethod
    def forward_normalized(self, x: torch.Tensor) -> SegOutput:
        """ImageNet-normalised float (N, 3, H, W) -> :class:`SegOutput`."""

    @abc.abstractmethod
    def classifier(self) -> nn.Module:
        """The module mapping ``features`` to ``logits`` (a 1x1 conv or a small head)."""


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (N, C, h, w) maps to ``size`` = (H, W) (align_corners=False)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
