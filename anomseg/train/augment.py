"""Training augmentation (albumentations), deterministic per (seed, epoch, image).

Each sample's random scale / crop / flip is drawn from a seed derived from the run seed, the
epoch and the image index, so that an image is augmented the same way whichever process or
data-loader worker loads it: a run under torchrun sees exactly the batches a single process sees.
"""

from __future__ import annotations

import albumentations as A
import numpy as np


class SegAugment:
    """Random scale, pad (ignore / void fill), random crop, horizontal flip.

    Args:
        crop: (h, w) output size.
        scale: (min, max) resize factor range.
        flip: horizontal flips with probability 0.5.
    """

    def __init__(self, crop=(512, 512), scale=(0.5, 2.0), flip=True):
        h, w = crop
        self.transform = A.Compose(
            [A.RandomScale(scale_limit=(scale[0] - 1, scale[1] - 1), p=1.0),
             A.PadIfNeeded(h, w, border_mode=0, fill=0, fill_mask=255),
             A.RandomCrop(h, w),
             A.HorizontalFlip(p=0.5 if flip else 0.0)],
            additional_targets={"anomaly": "mask"}, seed=0,
        )

    def __call__(self, sample: dict, seed: int) -> dict:
        self.transform.set_random_seed(seed)
        sem = sample["semantic"]
        if sem.max(initial=0) > 255:
            raise ValueError("semantic ids above 255 cannot be augmented as uint8 masks")
        out = self.transform(image=sample["image"], mask=sem.astype(np.uint8), anomaly=sample["anomaly"])
        return {**sample, "image": out["image"], "semantic": out["mask"].astype(np.int64), "anomaly": out["anomaly"]}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
