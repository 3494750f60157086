"""Cityscapes with its "other" pixels as the open set (OpenGAN setup III).

Facts from ../shared/docs/FORMATS.md and the official label table (``cityscapesscripts``,
github.com/mcordts/cityscapesScripts, helpers/labels.py):

* closed set: the 19 classes with a train id 0..18 (labelIds 7, 8, 11, 12, 13, 17, 19, 20, 21,
  22, 23, 24, 25, 26, 27, 28, 31, 32, 33);
* void: labelIds 0-3 (unlabeled, ego vehicle, rectification border, out of roi); the license
  plate (id -1) is never written into labelIds PNGs by the official ``json2labelImg``;
* open ("other"): every other labelId, i.e. {4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30};
* splits as in OpenGAN (Kong & Ramanan, ICCV 2021), but deterministic: ``train`` = the train
  images in sorted order minus the last ``num_val``; ``val`` = those last ``num_val`` (10);
  ``test`` = the official val images (500).
"""

from __future__ import annotations

from pathlib import Path

from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from anomseg.data.base import LabelTable, Record, SegmentationDataset, require_dir
from anomseg.errors import DatasetError

VOID_LABEL_IDS = (0, 1, 2, 3)
CLOSED = {lab.id: lab.trainId for lab in _CS_LABELS if 0 <= lab.trainId < 255 and lab.id >= 0}
CLASS_NAMES = [lab.name for lab in sorted((l for l in _CS_LABELS if l.id in CLOSED), key=lambda l: l.trainId)]
OPEN_LABEL_IDS = tuple(sorted(lab.id for lab in _CS_LABELS if lab.id >= 0 and lab.id not in CLOSED and lab.id not in VOID_LABEL_IDS))
TABLE = LabelTable.build("Cityscapes labelIds", closed=CLOSED, anomaly=OPEN_LABEL_IDS, void=VOID_LABEL_IDS)

EXPECTED_TREE = (
    "<root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
    "<root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"
)
SPLITS = {"train": "train", "val": "train", "test": "val"}  # our split -> folder it reads


class CityscapesDataset(SegmentationDataset):
    """Cityscapes, 19 closed classes, "other" pixels as anomalies (see module docstring).

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` (held-out last ``num_val`` train images) or ``test``.
        num_val: how many of the last sorted train images form ``val`` (OpenGAN: 10).
        label_scale: serve labels nearest-downsampled by this factor (OpenGAN: 0.25).
        transform: optional ``sample -> sample`` callable.
    """

    def __init__(self, *, root, split="train", num_val=10, label_scale=None, transform=None):
        root = Path(root)
        if split not in SPLITS:
            raise DatasetError(f"Cityscapes split {split!r} is unknown; choose one of {sorted(SPLITS)}")
        folder = SPLITS[split]
        img_dir = require_dir(root / "leftImg8bit" / folder, "Cityscapes image folder", EXPECTED_TREE)
        gt_dir = require_dir(root / "gtFine" / folder, "Cityscapes label folder", EXPECTED_TREE)
        suffix = "_leftImg8bit.png"
        records = []
        for img in sorted(img_dir.glob(f"*/*{suffix}"), key=lambda p: p.name):
            stem = img.name[: -len(suffix)]
            label = gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
            if not label.is_file():
                raise DatasetError(f"{label}: label of image {img} not found; extract gtFine_trainvaltest.zip into {root}")
            records.append(Record(name=stem, image=img, label=label))
        if not records:
            raise DatasetError(f"{img_dir}: no *{suffix} images found; expected layout: {EXPECTED_TREE}")
        if folder == "train":
            if num_val < 0 or num_val >= len(records):
                raise DatasetError(f"num_val={num_val} must lie in [0, {len(records)}) for {len(records)} train images")
            cut = len(records) - num_val
            records = records[:cut] if split == "train" else records[cut:]
        super().__init__(
            records=records, table=TABLE, class_names=CLASS_NAMES, split=split,
            label_scale=label_scale, transform=transform,
        )
