"""Pasting outlier objects into images: open pixels for training heads and outlier exposure.

An outlier pool is a folder with ``images/<name>.png`` (RGB) and ``masks/<name>.png`` (1 or 255 =
object, 0 = background), as the synthetic generator writes to ``<root>/outliers``; any folder of
object crops with masks works the same way.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anomseg.data.base import resize_nearest
from anomseg.data.io import read_label, read_rgb
from anomseg.errors import DatasetError


class OutlierPool:
    """The (image, mask) pairs of a pool folder, loaded lazily."""

    def __init__(self, root: str | Path):
        root = Path(root)
        images = sorted((root / "images").glob("*.png"))
        if not images:
            raise DatasetError(f"{root}: no outlier objects found; expected {root}/images/<name>.png with "
                               f"{root}/masks/<name>.png (the synthetic generator writes <data root>/outliers)")
        for img in images:
            if not (root / "masks" / img.name).is_file():
                raise DatasetError(f"{root / 'masks' / img.name}: mask of outlier object {img} not found")
        self.root, self.images = root, images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img = read_rgb(self.images[i])
        mask = read_label(self.root / "masks" / self.images[i].name) > 0
        if mask.shape != img.shape[:2]:
            raise DatasetError(f"{self.images[i]}: mask size differs from the object image")
        return img, mask


def paste_objects(sample: dict, pool: OutlierPool, rng: np.random.Generator, count: int,
                  height_range=(0.08, 0.3)) -> dict:
    """Paste ``count`` random pool objects into a sample; returns a new sample.

    Each object is resized to a random height (fraction of the image height), placed at a random
    position fully or partly inside the image, and its pixels become ``anomaly`` 1 and
    ``semantic`` 255 (ignore): exactly the pasted pixels, nothing else. Objects are placed in image
    coordinates; labels served at a reduced scale (``label_scale``) get the pasted mask
    nearest-downsampled by the same rule as the labels themselves. Every pasted object is also an
    anomaly instance: ``instances`` (int32, 0 none) gets the next free id for its visible pixels (a later
    object covering an earlier one takes those pixels), after the sample's own instances if it has any.
    """
    image = sample["image"].copy()
    semantic = sample["semantic"].copy()
    anomaly = sample["anomaly"].copy()
    H, W = image.shape[:2]
    pasted = np.zeros((H, W), bool)
    ids = np.zeros((H, W), np.int32)
    for k in range(count):
        obj, mask = pool[int(rng.integers(len(pool)))]
        h = max(2, int(H * rng.uniform(*height_range)))
        w = max(2, int(round(obj.shape[1] * h / obj.shape[0])))
        obj = cv2.resize(obj, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        y0, x0 = int(rng.integers(-h // 2, H - h // 2)), int(rng.integers(-w // 2, W - w // 2))
        ys, xs = slice(max(0, y0), min(H, y0 + h)), slice(max(0, x0), min(W, x0 + w))
        m = mask[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
        image[ys, xs][m] = obj[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0][m]
        pasted[ys, xs] |= m
        ids[ys, xs][m] = k + 1
    if pasted.shape != anomaly.shape:
        pasted = resize_nearest(pasted.astype(np.uint8), anomaly.shape).astype(bool)
        ids = resize_nearest(ids, anomaly.shape)
    semantic[pasted] = 255
    anomaly[pasted] = 1
    instances = np.array(sample["instances"], np.int32) if "instances" in sample else np.zeros(anomaly.shape, np.int32)
    offset = int(instances.max(initial=0))
    instances[pasted] = ids[pasted] + offset
    return {**sample, "image": image, "semantic": semantic, "anomaly": anomaly, "instances": instances}


class Paster:
    """Pastes between ``count[0]`` and ``count[1]`` random objects of a pool into a sample; the random generator
    it is called with decides everything (how many, which, where, how large)."""

    def __init__(self, *, pool_root: str | Path, count=(1, 3), height_range=(0.08, 0.3)):
        self.pool = OutlierPool(pool_root)
        self.count, self.height_range = tuple(count), tuple(height_range)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        n = int(rng.integers(self.count[0], self.count[1] + 1))
        return paste_objects(sample, self.pool, rng, n, self.height_range)


class PastedDataset:
    """A dataset whose samples get pasted outlier objects, the same ones every time an index is read (seeded per
    (seed, index)): what a feature bank extracts once. Training draws fresh pastes per epoch instead (a
    :class:`Paster` called with a per-(seed, epoch, image) generator, as the published recipes paste anew at
    every iteration)."""

    def __init__(self, dataset, pool_root: str | Path, *, count=(1, 3), height_range=(0.08, 0.3), seed: int = 0):
        self.dataset, self.paster = dataset, Paster(pool_root=pool_root, count=count, height_range=height_range)
        self.pool, self.seed = self.paster.pool, seed
        self.class_names, self.split = dataset.class_names, f"{dataset.split}+pasted"

    @property
    def num_classes(self):
        return len(self.class_names)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return self.paster(self.dataset[i], np.random.default_rng([self.seed, i]))
