"""Per-split statistics of a dataset (what fraction of pixels each class and the anomalies take)."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from anomseg.data.base import SegmentationDataset


def summarize(dataset: SegmentationDataset, progress: bool = False) -> dict:
    """Pixel statistics of a whole split.

    Returns a dict with ``images``, ``images_with_anomaly``, ``pixels``, ``class_fraction``
    ({class name: fraction of all pixels}), ``anomaly_fraction`` and ``void_fraction``.
    """
    k = dataset.num_classes
    class_px = np.zeros(k, np.int64)
    anom_px = void_px = total = with_anom = 0
    for i in tqdm(range(len(dataset)), desc=f"summary {dataset.split}", disable=not progress, leave=False):
        s = dataset[i]
        sem, anom = s["semantic"], s["anomaly"]
        class_px += np.bincount(sem[sem < k].ravel(), minlength=k)[:k]
        n_anom = int((anom == 1).sum())
        anom_px += n_anom
        void_px += int((anom == 255).sum())
        total += anom.size
        with_anom += n_anom > 0
    return {
        "images": len(dataset),
        "images_with_anomaly": with_anom,
        "pixels": total,
        "class_fraction": {n: float(c) / total for n, c in zip(dataset.class_names, class_px)},
        "anomaly_fraction": anom_px / total,
        "void_fraction": void_px / total,
    }
