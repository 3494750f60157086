"""What segmentation training is made of: pixel losses (cross-entropy and outlier-exposure losses) and
joint image / label augmentation. The training loop itself is a runner: :mod:`anomseg.engine.train_seg`."""

from anomseg.train.augment import SegAugment, sample_seed
from anomseg.train.losses import LOSSES, pixel_loss

__all__ = ["SegAugment", "sample_seed", "LOSSES", "pixel_loss"]
