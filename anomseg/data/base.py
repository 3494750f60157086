"""The sample contract and the one mechanism every adapter shares.

Every real dataset here stores one 8-bit id per pixel; a :class:`LabelTable` maps each raw
value to a closed-set train id (``semantic``) and an anomaly mark (``anomaly``) through two
256-entry lookup tables, and flags values that are not in the dataset's table at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from anomseg.data.io import read_instance_ids, read_label, read_rgb
from anomseg.errors import DatasetError

IGNORE = 255  #: ``semantic`` value of pixels outside the closed set
INLIER, ANOMALY, VOID = 0, 1, 255  #: ``anomaly`` values


@dataclass(frozen=True)
class LabelTable:
    """Raw 8-bit label value -> (semantic train id, anomaly mark).

    Attributes:
        name: the table's name, used in error messages.
        semantic: int64 (256,), the train id of each raw value (255 = ignore).
        anomaly: uint8 (256,), 0 inlier / 1 anomaly / 255 void for each raw value.
        valid: bool (256,), whether a raw value belongs to the table at all.
    """

    name: str
    semantic: np.ndarray
    anomaly: np.ndarray
    valid: np.ndarray

    @classmethod
    def build(
        cls,
        name: str,
        closed: Mapping[int, int],
        anomaly: Iterable[int] = (),
        void: Iterable[int] = (),
        inlier: Iterable[int] = (),
    ) -> "LabelTable":
        """Build a table from raw value sets.

        Args:
            closed: raw value -> closed-set train id (inlier pixels).
            anomaly: raw values of anomaly / open-set pixels (semantic 255, anomaly 1).
            void: raw values excluded everywhere (semantic 255, anomaly 255).
            inlier: raw values of inlier pixels without a known closed class (semantic 255,
                anomaly 0), as in anomaly-only masks.
        Every other raw value is invalid and makes :meth:`decode` raise.
        """
        semantic = np.full(256, IGNORE, dtype=np.int64)
        anom = np.full(256, VOID, dtype=np.uint8)
        valid = np.zeros(256, dtype=bool)
        seen: set[int] = set()
        inlier = tuple(inlier)
        for group, values in (("closed", closed.keys()), ("anomaly", anomaly), ("void", void), ("inlier", inlier)):
            for v in values:
                if not 0 <= v <= 255 or v in seen:
                    raise ValueError(f"label table {name}: raw value {v} ({group}) is out of 0..255 or listed twice")
                seen.add(v)
                valid[v] = True
        for raw, train_id in closed.items():
            semantic[raw] = train_id
            anom[raw] = INLIER
        for raw in anomaly:
            anom[raw] = ANOMALY
        for raw in inlier:
            anom[raw] = INLIER
        return cls(name=name, semantic=semantic, anomaly=anom, valid=valid)

    def check(self, raw: np.ndarray, path: str | Path) -> None:
        """Raise DatasetError listing the raw values of ``raw`` that are not in the table."""
        bad = ~self.valid[raw]
        if bad.any():
            values = np.unique(raw[bad]).tolist()
            allowed = np.flatnonzero(self.valid).tolist()
            raise DatasetError(
                f"{path}: label values {values} are not in the {self.name} table "
                f"(valid raw values: {_ranges(allowed)}); is this the right dataset or label file?"
            )

    def decode(self, raw: np.ndarray, path: str | Path = "<array>") -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H, W) raw ids -> (semantic int64 (H, W), anomaly uint8 (H, W))."""
        self.check(raw, path)
        return self.semantic[raw], self.anomaly[raw]


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def inside(root, path: Path, listing) -> Path:
    """``path`` if it stays inside ``root`` once resolved (symbolic links and ``..`` followed), else a
    DatasetError naming the file that listed it: a frame list, split file or index may name only files of its
    dataset."""
    base = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != base and base not in resolved.parents:
        raise DatasetError(f"{listing}: lists {path}, which leads outside the dataset root {base} (to {resolved}); "
                           f"a listed path must stay inside the dataset: fix or replace the list")
    return path


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) map to ``size`` = (h, w).

    Output pixel (i, j) takes input pixel (floor((i + 0.5) * H / h), floor((j + 0.5) * W / w)):
    the input pixel under the centre of the output cell (for a factor-4 reduction, the pixel at
    offset 2 in each 4x4 block), which keeps labels aligned with stride-s feature maps.
    """
    h, w = size
    H, W = label.shape[:2]
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return label[rows[:, None], cols[None, :]]


def majority_labels(label: np.ndarray, size: tuple[int, int], agreement: float, void: int = 255) -> np.ndarray:
    """The most frequent value of each cell when a (H, W) map is cut into a ``size`` = (h, w) grid (cell i covers
    rows floor(i H / h) .. floor((i + 1) H / h) - 1, columns likewise), ``void`` where it covers less than
    ``agreement`` of the cell (PixOOD ``net/models/grood.py``: per 14 x 14 patch the most frequent label, void
    included, fraction < PATCH_MAJORITY_VOTE_THR 0.9 -> 255; ../shared/docs/FORMATS.md). Ties go to the smaller
    value. Returns (h, w) of ``label``'s dtype."""
    h, w = size
    H, W = label.shape[:2]
    if h > H or w > W:
        raise ValueError(f"a {H} x {W} map cannot be cut into a finer {h} x {w} grid")
    rows, cols = (np.arange(h) * H) // h, (np.arange(w) * W) // w
    area = np.outer(np.diff(np.append(rows, H)), np.diff(np.append(cols, W)))
    best = np.full((h, w), void, label.dtype)
    count = np.zeros((h, w), np.int64)
    for v in np.unique(label):
        c = np.add.reduceat(np.add.reduceat((label == v).astype(np.int64), rows, 0), cols, 1)
        better = c > count
        best[better], count[better] = v, c[better]
    best[count < agreement * area] = void
    return best


@dataclass(frozen=True)
class Record:
    """One sample on disk: its name, image file and label file.

    ``label`` is ``None`` for a frame whose labels are not public (a benchmark's test split): such a
    frame can be scored, and its ``anomaly`` is all void. ``group`` names the score-file folder a
    benchmark reads the frame's scores from (SegmentMeIfYouCan's persistence name); ``None``: the split.
    """

    name: str
    image: Path
    label: Path | None
    group: str | None = None
    instances: Path | None = None  # anomaly instance ids (16-bit PNG: 0 none, k instance k; -1 as 65535: a group)


class SegmentationDataset:
    """A list of image/label records decoded through a :class:`LabelTable`.

    ``dataset[i]`` returns the sample contract, a dict with:

    * ``image``: uint8 (H, W, 3) RGB;
    * ``semantic``: int64 (h, w) closed-set train ids 0..K-1, 255 = ignore;
    * ``anomaly``: uint8 (h, w), 0 inlier / 1 anomaly / 255 void;
    * ``name``: str, a stable identifier of the sample;
    * ``instances`` (only where the dataset has them): int32 (h, w) anomaly instance ids, 0 none, k >= 1
      instance k, -1 anomaly pixels without an instance id (a group); what ``protocol: instances`` scores.

    (h, w) = (H, W) unless ``label_scale`` is set, in which case labels are nearest-downsampled to
    (round(H * label_scale), round(W * label_scale)).

    Args:
        records: the samples, in order.
        table: how raw label values decode.
        class_names: the K closed-set classes, index = train id.
        split: the split's name (for messages and ``repr``).
        label_scale: optional factor in (0, 1] for labels served at reduced resolution.
        transform: optional callable ``sample -> sample`` applied last (augmentation).
    """

    def __init__(
        self,
        *,
        records: Sequence[Record],
        table: LabelTable,
        class_names: Sequence[str],
        split: str,
        label_scale: float | None = None,
        transform: Callable[[dict], dict] | None = None,
    ):
        if len(records) == 0:
            raise DatasetError(f"{table.name} split {split!r} is empty; check the dataset root and split lists")
        if label_scale is not None and not 0 < label_scale <= 1:
            raise DatasetError(f"label_scale={label_scale} must lie in (0, 1], e.g. 0.25 for stride-4 features")
        self.records = list(records)
        self.table = table
        self.class_names = list(class_names)
        self.split = split
        self.label_scale = label_scale
        self.transform = transform
        #: where the labels of frames without public labels are evaluated (set by benchmark adapters)
        self.hidden_labels_note = "their labels are not public"

    @property
    def labels_hidden(self) -> bool:
        """Whether any frame of the split has no public label (it can be scored, not evaluated)."""
        return any(r.label is None for r in self.records)

    def group(self, index: int) -> str:
        """The score-file folder of a frame (see :class:`Record`)."""
        return self.records[index].group or self.split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, images={len(self)}, classes={self.num_classes})"

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 (H, W, 3), raw label uint8 (H, W)) of a record, sizes checked."""
        rec = self.records[index]
        image = read_rgb(rec.image)
        if rec.label is None:
            raise DatasetError(f"{rec.image}: frame {rec.name!r} has no public label ({self.hidden_labels_note})")
        raw = self.read_label(rec.label)
        if raw.shape != image.shape[:2]:
            raise DatasetError(
                f"{rec.label}: label size {raw.shape[1]}x{raw.shape[0]} differs from image {rec.image} "
                f"size {image.shape[1]}x{image.shape[0]} (WxH); the pair does not belong together"
            )
        return image, raw

    @property
    def has_instances(self) -> bool:
        """Whether every labelled frame of the split has anomaly instance ids (``protocol: instances``)."""
        return all(r.instances is not None for r in self.records if r.label is not None)

    def read_instances(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        """int32 (h, w) instance ids of a file (16-bit PNG; 65535 = -1, a group), at the label size."""
        ids = read_instance_ids(path)
        if self.label_scale is not None and self.label_scale != 1:
            H, W = ids.shape
            ids = resize_nearest(ids, (max(1, round(H * self.label_scale)), max(1, round(W * self.label_scale))))
        if ids.shape != tuple(shape):
            raise DatasetError(f"{path}: instance map size {ids.shape[1]}x{ids.shape[0]} differs from its label's "
                               f"{shape[1]}x{shape[0]} (WxH); the files do not belong together")
        return ids

    def read_label(self, path: Path) -> np.ndarray:
        """uint8 (H, W) raw label values of a file (adapters with another encoding override this)."""
        return read_label(path)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rec = self.records[index]
        if rec.label is None:  # scored, never evaluated: every pixel void
            image = read_rgb(rec.image)
            H, W = image.shape[:2]
            if self.label_scale is not None and self.label_scale != 1:
                H, W = max(1, round(H * self.label_scale)), max(1, round(W * self.label_scale))
            sample = {"image": image, "semantic": np.full((H, W), IGNORE, np.int64),
                      "anomaly": np.full((H, W), VOID, np.uint8), "name": rec.name}
            return self.transform(sample) if self.transform is not None else sample
        image, raw = self.load_raw(index)
        if self.label_scale is not None and self.label_scale != 1:
            H, W = raw.shape
            raw = resize_nearest(raw, (max(1, round(H * self.label_scale)), max(1, round(W * self.label_scale))))
        semantic, anomaly = self.table.decode(raw, rec.label)
        sample = {"image": image, "semantic": semantic, "anomaly": anomaly, "name": rec.name}
        if rec.instances is not None:
            sample["instances"] = self.read_instances(rec.instances, raw.shape)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def require_dir(path: Path, what: str, expected: str) -> Path:
    """Return ``path`` if it is a directory, else raise a DatasetError showing the expected tree."""
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found; expected layout: {expected}")
    return path
