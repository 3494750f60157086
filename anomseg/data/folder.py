"""Evaluation-only anomaly sets laid out as images plus 0 / 1 / 255 masks.

The RoadAnomaly / Fishyscapes / SegmentMeIfYouCan style: ``<root>/<images>/<name>.<ext>`` and
``<root>/<masks>/<name><mask_suffix>`` with mask value 0 = inlier, 1 = anomaly, 255 = void. The
mask file is found as ``<name><mask_suffix>`` (SMIYC: ``_labels_semantic.png``) or, failing that,
``<name>.png``. There are no closed-set labels: ``semantic`` is all 255.
"""

from __future__ import annotations

from pathlib import Path

from anomseg.data.base import LabelTable, Record, SegmentationDataset, require_dir
from anomseg.errors import DatasetError

TABLE = LabelTable.build("anomaly mask (0 inlier / 1 anomaly / 255 void)", closed={}, anomaly=(1,), void=(255,),
                         inlier=(0,))
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


class FolderAnomalyDataset(SegmentationDataset):
    """Images with 0/1/255 anomaly masks (see module docstring).

    Args:
        root: the dataset folder.
        split: an optional subfolder of ``root`` (``None`` or ``""``: ``root`` itself).
        images, masks: subfolder names (SMIYC: ``images`` and ``labels_masks``).
        mask_suffix: suffix of a mask file name after the image stem.
        class_names: the closed classes of the model evaluated (for reports; no labels exist).
    """

    def __init__(self, *, root, split=None, images="images", masks="labels_masks",
                 mask_suffix="_labels_semantic.png", class_names=(), transform=None):
        base = Path(root) / split if split else Path(root)
        expected = f"<root>/{images}/<name>.png|jpg and <root>/{masks}/<name>{mask_suffix} (0 inlier, 1 anomaly, 255 void)"
        img_dir = require_dir(base / images, "image folder", expected)
        mask_dir = require_dir(base / masks, "mask folder", expected)
        records = []
        for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
            for cand in (mask_dir / f"{img.stem}{mask_suffix}", mask_dir / f"{img.stem}.png"):
                if cand.is_file():
                    records.append(Record(name=img.stem, image=img, label=cand))
                    break
            else:
                raise DatasetError(f"{mask_dir / (img.stem + mask_suffix)}: mask of image {img} not found")
        if not records:
            raise DatasetError(f"{img_dir}: no images found; expected layout: {expected}")
        super().__init__(records=records, table=TABLE, class_names=class_names, split=split or "all", transform=transform)
