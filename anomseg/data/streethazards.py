"""StreetHazards (CAOS benchmark, Hendrycks et al.), and the synthetic set that shares its layout.

Facts from ../shared/docs/FORMATS.md (source: github.com/hendrycks/anomaly-seg):

* layout: ``train/images/training/<town>/<n>.png`` + ``train/annotations/training/...`` (towns
  t1-t3), ``train/images/validation/t4/...``, ``test/images/test/<town>/...`` (t5, t6); an
  annotation has its image's file name;
* annotation PNGs hold raw values 1..14; the class is raw - 1 (subtracted exactly once):
  0 unlabeled ... 12 traffic sign, 13 anomaly (raw 14). Raw 13 is the traffic sign, an inlier;
* closed set: the 13 classes 0..12, "unlabeled" included;
* optional index files ``training.odgt`` / ``validation.odgt`` / ``test.odgt`` in the root: the
  reference script writes one line holding a JSON array, the upstream CSAIL code one JSON object
  per line; both are read, and without them the folders are walked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from anomseg.data.base import LabelTable, Record, SegmentationDataset, inside, require_dir
from anomseg.errors import DatasetError

CLASS_NAMES = [
    "unlabeled", "building", "fence", "other", "pedestrian", "pole", "road line",
    "road", "sidewalk", "vegetation", "car", "wall", "traffic sign",
]
ANOMALY_RAW = 14  # raw value of the anomaly class (class 13 after the shift)


def label_table(unlabeled_as_void: bool = False) -> LabelTable:
    """Raw annotation value (1..14) -> class (raw - 1); raw 14 is the anomaly."""
    closed = {raw: raw - 1 for raw in range(1, 14)}
    void = ()
    if unlabeled_as_void:
        del closed[1]
        void = (1,)
    return LabelTable.build("StreetHazards", closed=closed, anomaly=(ANOMALY_RAW,), void=void)


# split -> (top folder, images subfolder, odgt file)
SPLITS = {
    "train": ("train", "training", "training.odgt"),
    "val": ("train", "validation", "validation.odgt"),
    "test": ("test", "test", "test.odgt"),
}
EXPECTED_TREE = (
    "<root>/train/{images,annotations}/{training,validation}/<town>/<n>.png and "
    "<root>/test/{images,annotations}/test/<town>/<n>.png (extract streethazards_train.tar and "
    "streethazards_test.tar into <root>)"
)


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def read_odgt(path: Path) -> list[dict]:
    """Parse an .odgt index: one JSON array (the CAOS script) or one JSON object per line (CSAIL)."""
    text = path.read_text().strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            return [data]
    except json.JSONDecodeError:
        pass
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: not JSON ({exc.msg}); expected a JSON array or one JSON object per line") from None
    return entries


def _records_from_odgt(root: Path, odgt: Path) -> list[Record]:
    records = []
    for i, entry in enumerate(read_odgt(odgt)):
        try:
            img, seg = inside(root, root / entry["fpath_img"], odgt), inside(root, root / entry["fpath_segm"], odgt)
        except (KeyError, TypeError):
            raise DatasetError(f"{odgt}: entry {i} lacks 'fpath_img' / 'fpath_segm'; regenerate the index or delete it to walk the folders") from None
        inst = None
        if isinstance(entry, dict) and entry.get("fpath_inst") is not None:  # anomseg's synthetic set: instance ids
            if not isinstance(entry["fpath_inst"], str):
                raise DatasetError(f"{odgt}: entry {i}: 'fpath_inst' must be a path string, got {entry['fpath_inst']!r}")
            inst = inside(root, root / entry["fpath_inst"], odgt)
        for p in (img, seg) + ((inst,) if inst is not None else ()):
            if not p.is_file():
                raise DatasetError(f"{p}: listed in {odgt} (entry {i}) but not found; paths are relative to {root}")
        records.append(Record(name=f"{img.parent.name}/{img.stem}", image=img, label=seg, instances=inst))
    return records


def _records_from_walk(root: Path, top: str, sub: str) -> list[Record]:
    img_dir = require_dir(root / top / "images" / sub, "StreetHazards image folder", EXPECTED_TREE)
    ann_dir = require_dir(root / top / "annotations" / sub, "StreetHazards annotation folder", EXPECTED_TREE)
    records = []
    for img in sorted(img_dir.glob("*/*.png"), key=_natural_key):
        seg = ann_dir / img.parent.name / img.name
        if not seg.is_file():
            raise DatasetError(f"{seg}: annotation of {img} not found; annotations share their image's file name")
        inst = root / top / "instances" / sub / img.parent.name / img.name  # anomseg's synthetic set
        records.append(Record(name=f"{img.parent.name}/{img.stem}", image=img, label=seg,
                              instances=inst if inst.is_file() else None))
    return records


class StreetHazardsDataset(SegmentationDataset):
    """StreetHazards: 13 closed classes, anomaly = raw 14 (see module docstring).

    Args:
        root: the folder holding ``train/`` and ``test/`` (and any ``*.odgt``).
        split: ``train``, ``val`` or ``test``.
        index: ``"auto"`` (use the split's .odgt if present, else walk), ``"odgt"`` or ``"walk"``.
        unlabeled_as_void: treat class 0 "unlabeled" as void (semantic 255, anomaly 255) instead
            of a closed class; class ids stay 0..12.
        transform: optional ``sample -> sample`` callable.
    """

    def __init__(self, *, root, split="train", index="auto", unlabeled_as_void=False, transform=None):
        root = Path(root)
        if split not in SPLITS:
            raise DatasetError(f"StreetHazards split {split!r} is unknown; choose one of {sorted(SPLITS)}")
        if index not in ("auto", "odgt", "walk"):
            raise DatasetError(f"index={index!r} is unknown; choose 'auto', 'odgt' or 'walk'")
        if not root.is_dir():
            raise DatasetError(f"{root}: StreetHazards root not found; expected layout: {EXPECTED_TREE}, or the "
                               f"synthetic set in this layout: anomseg make-synthetic {root}")
        top, sub, odgt_name = SPLITS[split]
        odgt = root / odgt_name
        if index == "odgt" and not odgt.is_file():
            raise DatasetError(f"{odgt}: index file not found; pass index='walk' to read the folders instead")
        if index == "odgt" or (index == "auto" and odgt.is_file()):
            records = _records_from_odgt(root, odgt)
        else:
            records = _records_from_walk(root, top, sub)
        super().__init__(
            records=records, table=label_table(unlabeled_as_void), class_names=CLASS_NAMES,
            split=split, transform=transform,
        )
