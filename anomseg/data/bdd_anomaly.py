"""BDD-Anomaly (CAOS benchmark), built from the BDD100K 10K semantic segmentation set.

Facts from ../shared/docs/FORMATS.md (sources: BDD100K documentation; github.com/hendrycks/anomaly-seg):

* BDD100K sem_seg labels are train ids in the Cityscapes 19-class order, 255 = void;
* anomalies: train, motorcycle, bicycle (train ids 16, 17, 18). Every train or val image that
  contains any of them goes to the anomaly test split; the rest stay train / val. On the real
  labels this gives 6280 train / 910 val / 810 test;
* closed set: train ids 0..15 (16 classes);
* two layouts relative to the root a user passes (the extracted ``bdd100k/`` folder):
  newer ``images/10k/{train,val}/<id>.jpg`` + ``labels/sem_seg/masks/{train,val}/<id>.png``,
  older ``seg/images/{train,val}/<id>.jpg`` + ``seg/labels/{train,val}/<id>_train_id.png``.
  Image ids keep their case (two of them use upper-case hex).

:func:`prepare_bdd_anomaly` writes the split lists ``<root>/bdd_anomaly/{train,val,test}.txt``
(one image id a line), which :class:`BDDAnomalyDataset` reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from anomseg.files import make_dirs, write_text_atomic
from anomseg.data.base import LabelTable, Record, SegmentationDataset, inside
from anomseg.data.io import read_label
from anomseg.errors import DatasetError

CLASS_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus",
]
ANOMALY_TRAIN_IDS = (16, 17, 18)  # train, motorcycle, bicycle
TABLE = LabelTable.build(
    "BDD100K sem_seg train ids", closed={i: i for i in range(16)}, anomaly=ANOMALY_TRAIN_IDS, void=(255,)
)
SOURCE_SPLITS = ("train", "val")
SPLIT_DIR = "bdd_anomaly"


@dataclass(frozen=True)
class BDDLayout:
    """Where one of the two BDD100K layouts keeps images and labels."""

    name: str
    images: str  # relative folder, formatted with the source split
    labels: str
    label_suffix: str  # label file name = <id> + label_suffix
    image_suffix: str = ".jpg"

    def image_path(self, root: Path, split: str, image_id: str) -> Path:
        return root / self.images.format(split=split) / f"{image_id}{self.image_suffix}"

    def label_path(self, root: Path, split: str, image_id: str) -> Path:
        return root / self.labels.format(split=split) / f"{image_id}{self.label_suffix}"

    def label_ids(self, root: Path, split: str) -> list[str]:
        folder = root / self.labels.format(split=split)
        return sorted(p.name[: -len(self.label_suffix)] for p in folder.glob(f"*{self.label_suffix}"))


LAYOUTS = (
    BDDLayout("bdd100k", images="images/10k/{split}", labels="labels/sem_seg/masks/{split}", label_suffix=".png"),
    BDDLayout("seg", images="seg/images/{split}", labels="seg/labels/{split}", label_suffix="_train_id.png"),
)
EXPECTED_TREE = (
    "<root>/images/10k/{train,val}/<id>.jpg + <root>/labels/sem_seg/masks/{train,val}/<id>.png, or "
    "<root>/seg/images/{train,val}/<id>.jpg + <root>/seg/labels/{train,val}/<id>_train_id.png"
)


def detect_layout(root: str | Path) -> BDDLayout:
    """The layout whose label folders exist under ``root``; DatasetError if none does."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: BDD100K root not found; expected layout: {EXPECTED_TREE}")
    for layout in LAYOUTS:
        if all((root / layout.labels.format(split=s)).is_dir() for s in SOURCE_SPLITS):
            return layout
    raise DatasetError(f"{root}: no BDD100K label folders found; expected layout: {EXPECTED_TREE}")


def is_anomalous(raw: np.ndarray) -> bool:
    """Whether a train-id label map contains train, motorcycle or bicycle pixels."""
    return bool((TABLE.anomaly[raw] == 1).any())


def prepare_bdd_anomaly(root: str | Path, *, require_images: bool = True, progress: bool = True) -> dict[str, int]:
    """Write the BDD-Anomaly split lists ``<root>/bdd_anomaly/{train,val,test}.txt``.

    Every label map of the BDD100K train and val splits is decoded; an image with any pixel of
    train id 16, 17 or 18 goes to ``test``, the others keep their split. Label values outside
    0..18 and 255 raise DatasetError naming the file.

    Args:
        root: the BDD100K root (either layout, see module docstring).
        require_images: fail if a labelled image has no image file (off: lists from labels alone).
        progress: show a progress bar.
    Returns:
        ``{"train": n, "val": n, "test": n, "test_from_train": n, "test_from_val": n}``.
    """
    root = Path(root)
    layout = detect_layout(root)
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    counts: dict[str, int] = {}
    for split in SOURCE_SPLITS:
        ids = layout.label_ids(root, split)
        if not ids:
            raise DatasetError(f"{root / layout.labels.format(split=split)}: no *{layout.label_suffix} label maps found")
        if require_images:
            missing = [i for i in ids if not layout.image_path(root, split, i).is_file()]
            if missing:
                raise DatasetError(
                    f"{layout.image_path(root, split, missing[0])}: image not found ({len(missing)} of {len(ids)} "
                    f"{split} labels lack images); extract the 10K images, or pass require_images=False"
                )
        n_anom = 0
        for image_id in tqdm(ids, desc=f"BDD {split} labels", disable=not progress, leave=False):
            path = layout.label_path(root, split, image_id)
            raw = read_label(path)
            TABLE.check(raw, path)
            if is_anomalous(raw):
                lists["test"].append(image_id)
                n_anom += 1
            else:
                lists[split].append(image_id)
        counts[f"test_from_{split}"] = n_anom
    out = root / SPLIT_DIR
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; the split lists go into {out}/: move the file away")
    make_dirs(out)
    for split, ids in lists.items():
        counts[split] = len(ids)
        write_text_atomic(out / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    meta = {"layout": layout.name, "anomaly_train_ids": list(ANOMALY_TRAIN_IDS), "counts": counts}
    write_text_atomic(out / "prepare.json", json.dumps(meta, indent=2) + "\n")
    return counts


class BDDAnomalyDataset(SegmentationDataset):
    """BDD-Anomaly: 16 closed classes, anomaly = train ids 16/17/18, void = 255.

    Args:
        root: the BDD100K root, prepared with :func:`prepare_bdd_anomaly`.
        split: ``train``, ``val`` or ``test``.
        transform: optional ``sample -> sample`` callable.
    """

    def __init__(self, *, root, split="train", transform=None):
        root = Path(root)
        if split not in ("train", "val", "test"):
            raise DatasetError(f"BDD-Anomaly split {split!r} is unknown; choose one of ['test', 'train', 'val']")
        layout = detect_layout(root)
        list_file = root / SPLIT_DIR / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetError(f"{list_file}: split list not found; run `python datasets/prepare_bdd_anomaly.py {root}` first")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        records = []
        for image_id in ids:
            for source in SOURCE_SPLITS:
                label = inside(root, layout.label_path(root, source, image_id), list_file)
                if label.is_file():
                    break
            else:
                raise DatasetError(f"{list_file}: image id {image_id!r} has no label map in train or val; re-run the preparation")
            image = inside(root, layout.image_path(root, source, image_id), list_file)
            if not image.is_file():
                raise DatasetError(f"{image}: image not found for id {image_id!r} listed in {list_file}")
            records.append(Record(name=image_id, image=image, label=label))
        super().__init__(records=records, table=TABLE, class_names=CLASS_NAMES, split=split, transform=transform)
