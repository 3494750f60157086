"""OoDIS' anomaly instance labels of LostAndFound (its "fishyscapes" set, the one with public labels).

Facts (../shared/docs/FORMATS.md, "OoDIS"; kumuji/anomaly-benchmark-suite @ 110a360 ``assets/expected_files.txt``
and README; kumuji/ugains ``ugains/datamodules/datasets/fishyscapes_lost_found.py``):

* the set is every LostAndFound frame, train and test: 1036 + 1203 = 2239 entries in ``expected_files.txt``,
  named ``<fid>_gtCoarse_instanceIds_pred.txt``;
* its public labels (``fs_lost_found_instance.zip``, the README's link) are Cityscapes-encoded instance PNGs
  ``<fid>_gtCoarse_instanceIds.png``; UGainS reads them from a ``lost_found_instance/gtCoarse/<split>/<city>/``
  tree beside LostAndFound, the scoring program from one flat folder. Both are found here: every
  ``*_gtCoarse_instanceIds.png`` under ``labels`` (default ``<root>/lost_found_instance``), by frame id;
* anomalies are label 26 (every prediction is scored as "car"): values 26000 + k are instance k, 26 a group;
  the void ids of the Cityscapes labels are void (:mod:`anomseg.instances.oodis`).

A sample's ``anomaly`` is derived from the same PNG (1 on anomaly instances and groups, 255 on void, 0
elsewhere), so the pixel metrics and the instance protocol see one ground truth; ``instances`` holds the
instance ids (-1 groups) and ``instance_other_labels`` the other Cityscapes instance labels with an object
in the frame (the scorer averages an AP of 0 for each). The released PNGs' background / void values are not
established from code (FORMATS.md): check ``np.unique`` of a few before trusting a score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomseg.data.base import IGNORE, LabelTable, Record, SegmentationDataset
from anomseg.data.io import _open, read_rgb
from anomseg.data.smiyc import LAF_EXPECTED, _check_count, _dataset_dir, _laf_images
from anomseg.errors import DatasetError

#: LostAndFound frames per folder (= OoDIS' fishyscapes entries: 2239 in all)
COUNTS = {"train": 1036, "test": 1203, "all": 2239}
SUFFIX = "_gtCoarse_instanceIds.png"
EXPECTED = (f"{LAF_EXPECTED}; labels: <labels>/**/<fid>{SUFFIX} (fs_lost_found_instance.zip, default "
            f"<root>/lost_found_instance)")
TABLE = LabelTable.build("OoDIS instance ids (anomaly = label 26)", closed={}, inlier=(0,), anomaly=(1,), void=(255,))


def read_cityscapes_ids(path: Path) -> np.ndarray:
    """int64 (H, W) values of a Cityscapes instance-id PNG (16-bit, or 8-bit without instances)."""
    img = _open(path)
    if img.mode not in ("I;16", "I", "L", "P"):
        raise DatasetError(f"{path}: instance-id PNG has mode {img.mode!r}; expected a single-channel 16-bit Cityscapes "
                           f"instanceIds map (label * 1000 + instance)")
    return np.asarray(img).astype(np.int64)


class OodisLostAndFoundDataset(SegmentationDataset):
    """OoDIS' LostAndFound instance labels with the LostAndFound images (see the module docstring).

    Args:
        root: the folder holding ``dataset_LostAndFound`` (or that folder itself).
        split: ``all`` (2239, the benchmark's set), ``train`` (1036) or ``test`` (1203).
        labels: the folder of the instance PNGs (searched recursively); default ``<root>/lost_found_instance``.
        check_size: refuse a split whose frame count is not the official one.
    """

    def __init__(self, *, root, split="all", labels=None, check_size=True, class_names=(), transform=None):
        if split not in COUNTS:
            raise DatasetError(f"oodis_lost_and_found split {split!r} is unknown; choose one of {', '.join(COUNTS)}")
        base = _dataset_dir(root, "dataset_LostAndFound", "leftImg8bit", LAF_EXPECTED)
        label_dir = Path(labels) if labels is not None else Path(root) / "lost_found_instance"
        if not label_dir.is_dir():
            raise DatasetError(f"{label_dir}: OoDIS instance label folder not found; unzip fs_lost_found_instance.zip "
                               f"there or pass data option labels: <folder>; expected layout: {EXPECTED}")
        found: dict[str, Path] = {}
        for p in sorted(label_dir.rglob(f"*{SUFFIX}")):
            fid = p.name[: -len(SUFFIX)]
            if fid in found:
                raise DatasetError(f"{p}: a second instance label of frame {fid!r} (the first: {found[fid]}); keep one copy")
            found[fid] = p
        folders = ("train", "test") if split == "all" else (split,)
        images = {}
        for folder in folders:
            images.update(_laf_images(base, folder))
        fids = sorted(images)
        _check_count(f"OoDIS LostAndFound-{split}", len(fids), COUNTS[split], check_size)
        missing = [f for f in fids if f not in found]
        if missing:
            raise DatasetError(f"{label_dir}: no {missing[0]}{SUFFIX} ({len(missing)} of {len(fids)} frames lack an "
                               f"instance label); unzip the whole fs_lost_found_instance.zip; expected layout: {EXPECTED}")
        records = [Record(name=f, image=images[f], label=found[f], instances=found[f]) for f in fids]
        super().__init__(records=records, table=TABLE, split=split, class_names=class_names, transform=transform)
        self.component_track = "obstacle"

    def __getitem__(self, index: int) -> dict:
        from anomseg.instances.oodis import target_from_cityscapes

        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rec = self.records[index]
        image = read_rgb(rec.image)
        ids = read_cityscapes_ids(rec.label)
        if ids.shape != image.shape[:2]:
            raise DatasetError(f"{rec.label}: label size {ids.shape[1]}x{ids.shape[0]} differs from image {rec.image} size "
                               f"{image.shape[1]}x{image.shape[0]} (WxH); the pair does not belong together")
        gt, void, other = target_from_cityscapes(ids)
        anomaly = np.where(void, 255, np.where(gt != 0, 1, 0)).astype(np.uint8)
        sample = {"image": image, "semantic": np.full(ids.shape, IGNORE, np.int64), "anomaly": anomaly,
                  "name": rec.name, "instances": gt, "instance_other_labels": other}
        return self.transform(sample) if self.transform is not None else sample
