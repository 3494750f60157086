"""Backbones (HRNetV2-W48, PSPNet-ResNet101, any smp model), checkpoints, and inference.

``build_backbone(name, num_classes, **options)`` returns a module whose forward pass maps RGB
batches (uint8, or float in [0, 1]) to :class:`SegOutput` ``(logits, features, aux)``.
"""

from anomseg.models.base import IMAGENET_MEAN, IMAGENET_STD, SegmentationBackbone, SegOutput, resize_logits
from anomseg.models.checkpoints import (backbone_from_config, build_from_checkpoint, detect_format, load_checkpoint,
                                        load_pretrained, save_checkpoint)
from anomseg.models.identity import weights_hash
from anomseg.models.registry import BACKBONES, ModelError, build_backbone

__all__ = ["build_backbone", "backbone_from_config", "load_checkpoint", "save_checkpoint", "build_from_checkpoint", "detect_format",
           "load_pretrained",
           "SegOutput", "SegmentationBackbone", "resize_logits", "BACKBONES", "ModelError",
           "IMAGENET_MEAN", "IMAGENET_STD", "weights_hash"]
