"""SegmentMeIfYouCan and its neighbours by name: RoadAnomaly21, RoadObstacle21, LostAndFound,
Fishyscapes LostAndFound and RoadAnomaly (Lis et al. 2019), in their released layouts.

Facts (folder trees, label encodings, frame lists, expected counts, persistence names) from
../shared/docs/SMIYC.md, read from github.com/SegmentMeIfYouCan/road-anomaly-benchmark at 1c7804e
(``road_anomaly_benchmark/datasets/tracks.py``, ``tracks_extra.py``) and, for RoadAnomaly,
github.com/NazirNayal8/RbA ``datasets/road_anomaly.py``. The frame lists are in
:mod:`anomseg.data.smiyc_frames`.

Every adapter takes ``root`` = the benchmark's ``datasets`` folder (``DIR_DATASETS``, holding
``dataset_AnomalyTrack`` ...) or the dataset's own folder. Frames are sorted by frame id (``fid``)
as the reference sorts them. A frame without its label file in a split whose labels are hidden
(the test splits) is served with an all-void ``anomaly``: it can be scored and exported
(``export: smiyc``), and the evaluation refuses to compute metrics on it. ``semantic`` is all 255
(no closed-set labels); ``class_names`` names the evaluated model's classes for reports.
Each record's ``group`` is the persistence name the official code reads its scores from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from anomseg.data import smiyc_frames as frames
from anomseg.data.base import LabelTable, Record, SegmentationDataset, inside, require_dir
from anomseg.data.io import read_label
from anomseg.errors import DatasetError

SUBMIT = ("submit the exported score files (export: smiyc) to the SegmentMeIfYouCan benchmark "
          "(Codabench competition 5402, see segmentmeifyoucan.com)")

# 0 inlier, 1 anomaly, 255 void (AnomalyTrack, ObstacleTrack, Fishyscapes labels)
BINARY_TABLE = LabelTable.build("SMIYC label (0 inlier / 1 anomaly / 255 void)", closed={}, inlier=(0,), anomaly=(1,),
                                void=(255,))
# LostAndFound gtCoarse labelIds: 0 ignore, 1 free space (inlier), 2..200 obstacles; other values void
# (tracks.py DatasetLostAndFound LAF_CLASSES, applied by DatasetRA.get_frame)
LAF_TABLE = LabelTable.build("LostAndFound labelIds (0 void, 1 road, 2-200 obstacle, rest void)", closed={}, inlier=(1,),
                             anomaly=range(2, 201), void=[0, *range(201, 256)])
# RoadAnomaly (Lis et al.): background 0, anomaly 2 (RbA datasets/road_anomaly.py maps 2 -> 1); no void value
ROAD_ANOMALY_TABLE = LabelTable.build("RoadAnomaly label (0 background / 2 anomaly)", closed={}, inlier=(0,), anomaly=(2,))


def _dataset_dir(root, folder: str, marker: str, expected: str) -> Path:
    """``root`` itself if it holds ``marker``, else ``root/folder`` (the benchmark's datasets folder)."""
    root = Path(root)
    for cand in (root, root / folder):
        if (cand / marker).exists():
            return cand
    raise DatasetError(f"{root}: neither it nor {root / folder} holds {marker}/; expected layout: {expected}")


def _check_count(name: str, found: int, expected: int | None, check_size: bool) -> None:
    if check_size and expected is not None and found != expected:
        raise DatasetError(f"{name}: found {found} frames, the official split has {expected}; a partial or wrong copy? "
                           f"(data options check_size: false reads what is there)")


class _SmiycDataset(SegmentationDataset):
    """Shared constructor tail: records, the binary table, hidden-label note."""

    def __init__(self, *, records, table, split, class_names, transform, note=SUBMIT):
        super().__init__(records=records, table=table, class_names=class_names, split=split, transform=transform)
        self.hidden_labels_note = note


def _track_records(base: Path, fids, ext: str, group: str, public: bool) -> list[Record]:
    """AnomalyTrack / ObstacleTrack frames: ``images/<fid>.<ext>``, ``labels_masks/<fid>_labels_semantic.png``."""
    records = []
    for fid in fids:
        image = base / "images" / f"{fid}.{ext}"
        label = base / "labels_masks" / f"{fid}_labels_semantic.png"
        if not image.is_file():
            raise DatasetError(f"{image}: frame {fid!r} of the split not found; re-extract the dataset zip")
        if not label.is_file():
            if public:
                raise DatasetError(f"{label}: label of frame {fid!r} not found (this split's labels are public); "
                                   f"re-extract the dataset zip")
            label = None
        records.append(Record(name=fid, image=image, label=label, group=group))
    return records


class RoadAnomaly21Dataset(_SmiycDataset):
    """SegmentMeIfYouCan RoadAnomaly21 (AnomalyTrack): ``dataset_AnomalyTrack/images/<fid>.jpg`` +
    ``labels_masks/<fid>_labels_semantic.png`` (0 / 1 / 255); scores persist as ``AnomalyTrack-all``.

    Args:
        split: ``all`` (110 frames), ``test`` (100, labels hidden), ``validation`` (10, public),
            ``animals`` (59), ``vehicles`` (23), ``other`` (11) (per-class subsets of test).
        check_size: refuse a split whose frame count is not the official one.
    """

    EXPECTED = "<root>/dataset_AnomalyTrack/{images/<fid>.jpg, labels_masks/<fid>_labels_semantic.png}"

    def __init__(self, *, root, split="validation", check_size=True, class_names=(), transform=None):
        base = _dataset_dir(root, "dataset_AnomalyTrack", "images", self.EXPECTED)
        if split == "all":
            fids = sorted(p.stem for p in (base / "images").glob("*.jpg"))
            _check_count("AnomalyTrack-all", len(fids), 110, check_size)
        elif split in frames.ANOMALY_TRACK_SPLITS:
            fids = frames.ANOMALY_TRACK_SPLITS[split]
        else:
            raise DatasetError(f"road_anomaly21 split {split!r} is unknown; choose one of "
                               f"all, {', '.join(frames.ANOMALY_TRACK_SPLITS)}")
        records = _track_records(base, fids, "jpg", "AnomalyTrack-all", public=split == "validation")
        super().__init__(records=records, table=BINARY_TABLE, split=split, class_names=class_names, transform=transform)
        self.component_track = "anomaly"


class RoadObstacle21Dataset(_SmiycDataset):
    """SegmentMeIfYouCan RoadObstacle21 (ObstacleTrack): ``dataset_ObstacleTrack/images/<fid>.webp`` +
    ``labels_masks/<fid>_labels_semantic.png`` (0 road / 1 obstacle / 255 off the road: the road ROI lives
    in the label); scene = ``fid.split("_")[0]``; scores persist as ``ObstacleTrack-all``.

    Args:
        split: ``test`` (327 frames, labels hidden), ``validation`` (30, public), ``all``, ``noNight``
            (382), ``night`` (30), ``snowstorm`` (55).
        check_size: refuse a split whose frame count is not the official one.
    """

    EXPECTED = "<root>/dataset_ObstacleTrack/{images/<fid>.webp, labels_masks/<fid>_labels_semantic.png}"

    def __init__(self, *, root, split="validation", check_size=True, class_names=(), transform=None):
        base = _dataset_dir(root, "dataset_ObstacleTrack", "images", self.EXPECTED)
        if split not in frames.OBSTACLE_SPLITS:
            raise DatasetError(f"road_obstacle21 split {split!r} is unknown; choose one of {', '.join(frames.OBSTACLE_SPLITS)}")
        scenes, excluded, expected = frames.OBSTACLE_SPLITS[split]
        fids = sorted(p.stem for p in (base / "images").glob("*.webp"))
        fids = [f for f in fids if f.split("_")[0] in scenes and not any(f.startswith(p) for p in excluded)]
        _check_count(f"ObstacleTrack-{split}", len(fids), expected, check_size)
        records = _track_records(base, fids, "webp", "ObstacleTrack-all", public=split == "validation")
        super().__init__(records=records, table=BINARY_TABLE, split=split, class_names=class_names, transform=transform)
        self.component_track = "obstacle"


_LAF_FID = re.compile(r"([0-9]{2})_(.*)_([0-9]{6})_([0-9]{6})")  # tracks.py RE_LAF_NAME
LAF_EXPECTED = ("<root>/dataset_LostAndFound/leftImg8bit/{train,test}/<NN>_<scene>/<fid>_leftImg8bit.png and "
                "gtCoarse/{train,test}/<NN>_<scene>/<fid>_gtCoarse_labelIds.png")


def _laf_images(base: Path, folder: str) -> dict[str, Path]:
    """fid -> image of one LostAndFound folder (png, then webp, then jpg, as the reference tries them)."""
    img_dir = require_dir(base / "leftImg8bit" / folder, f"LostAndFound {folder} image folder", LAF_EXPECTED)
    for ext in ("png", "webp", "jpg"):
        files = sorted(img_dir.glob(f"*/*_leftImg8bit.{ext}"))
        if files:
            break
    else:
        raise DatasetError(f"{img_dir}: no <NN>_<scene>/<fid>_leftImg8bit.png|webp|jpg images; expected layout: {LAF_EXPECTED}")
    out = {}
    for f in files:
        fid = f.name[: -len(f"_leftImg8bit.{ext}")]
        if not _LAF_FID.fullmatch(fid):
            raise DatasetError(f"{f}: not a LostAndFound frame name (<NN>_<scene>_<seq:6>_<time:6>_leftImg8bit)")
        out[fid] = f
    return out


def _laf_label(base: Path, folder: str, fid: str, image: Path) -> Path:
    label = base / "gtCoarse" / folder / image.parent.name / f"{fid}_gtCoarse_labelIds.png"
    if not label.is_file():
        raise DatasetError(f"{label}: label of LostAndFound frame {fid!r} not found; expected layout: {LAF_EXPECTED}")
    return label


class LostAndFoundDataset(_SmiycDataset):
    """LostAndFound in its Cityscapes-style tree (labelIds: 0 void, 1 road -> inlier, 2..200 obstacle ->
    anomaly, others void; the ROI is the annotated free space plus the obstacles).

    Args:
        split: ``train`` (1036), ``test`` (1203), ``trainValid`` (1030), ``testValid`` (1186) or
            ``testNoKnown`` (1043, the SMIYC leaderboard split: the 17 frames with empty labels dropped by
            their index in the fid-sorted test list, then the children and bicycle sequences).
        check_size: refuse a folder or split whose frame count is not the official one (the dropped
            indices refer to the full, sorted test list: splits that drop frames need the full folder).
    """

    def __init__(self, *, root, split="testNoKnown", check_size=True, class_names=(), transform=None):
        base = _dataset_dir(root, "dataset_LostAndFound", "leftImg8bit", LAF_EXPECTED)
        if split not in frames.LAF_SPLITS:
            raise DatasetError(f"lost_and_found split {split!r} is unknown; choose one of {', '.join(frames.LAF_SPLITS)}")
        folder, dropped, excluded, expected, group = frames.LAF_SPLITS[split]
        images = _laf_images(base, folder)
        fids = sorted(images)
        full = frames.LAF_FULL_COUNTS[folder]
        if dropped and len(fids) != full:
            raise DatasetError(f"{base / 'leftImg8bit' / folder}: {len(fids)} frames, but LostAndFound-{split} drops frames "
                               f"by their index in the full sorted list of {full}; use the complete {folder} folder")
        drop = set(dropped)
        fids = [f for i, f in enumerate(fids) if i not in drop and not any(f.startswith(p) for p in excluded)]
        _check_count(f"LostAndFound-{split}", len(fids), expected, check_size)
        records = [Record(name=f, image=images[f], label=_laf_label(base, folder, f, images[f]), group=group) for f in fids]
        super().__init__(records=records, table=LAF_TABLE, split=split, class_names=class_names, transform=transform)
        self.component_track = "obstacle"


class FishyscapesLAFDataset(_SmiycDataset):
    """Fishyscapes LostAndFound: LostAndFound frames with Fishyscapes' own anomaly labels.

    Images are read from the LostAndFound tree (each frame from ``train`` if it is there, else from
    ``test``, whose persistence name it keeps); labels from ``<fishy_root>/labels/val/<fid>_fishy-labels.png``
    (0 / 1 / 255, used as they are). The public Fishyscapes files are named otherwise: rename them into
    this pattern (datasets/README.md).

    Args:
        root: the benchmark's datasets folder holding ``dataset_LostAndFound`` and ``dataset_FishyLAF``.
        split: ``val`` (FishyLAFAnomaly-val, 100 frames, Fishyscapes labels) or ``obstacle_val``
            (FishyLAFObstacle-val, 98 frames, the LostAndFound obstacle labels). The test frames are private.
        laf_root, fishy_root: the two folders, when they are not ``root/dataset_LostAndFound`` and
            ``root/dataset_FishyLAF``.
    """

    def __init__(self, *, root, split="val", laf_root=None, fishy_root=None, class_names=(), transform=None):
        root = Path(root)
        if split not in ("val", "obstacle_val"):
            hint = "; the Fishyscapes LAF test frames are private (submit to the Fishyscapes benchmark)" if "test" in split else ""
            raise DatasetError(f"fishyscapes_laf split {split!r} is unknown; choose val or obstacle_val{hint}")
        laf = _dataset_dir(laf_root or root, "dataset_LostAndFound", "leftImg8bit", LAF_EXPECTED)
        fishy = Path(fishy_root) if fishy_root else root / "dataset_FishyLAF"
        found = {folder: _laf_images(laf, folder) if (laf / "leftImg8bit" / folder).is_dir() else {}
                 for folder in ("train", "test")}
        fids = frames.FISHY_LAF_VAL
        if split == "obstacle_val":
            fids = [f for f in fids if f not in frames.FISHY_LAF_INVALID_LAF]
        records = []
        for fid in fids:
            folder = "train" if fid in found["train"] else "test"
            if fid not in found[folder]:
                raise DatasetError(f"{laf / 'leftImg8bit'}: LostAndFound frame {fid!r} of Fishyscapes LAF not found in "
                                   f"train/ or test/; expected layout: {LAF_EXPECTED}")
            image = found[folder][fid]
            if split == "val":
                label = fishy / "labels" / "val" / f"{fid}_fishy-labels.png"
                if not label.is_file():
                    raise DatasetError(f"{label}: Fishyscapes label of {fid!r} not found; put the labels at "
                                       f"<fishy_root>/labels/val/<fid>_fishy-labels.png (datasets/README.md)")
            else:
                label = _laf_label(laf, folder, fid, image)
            records.append(Record(name=fid, image=image, label=label, group=f"LostAndFound-{folder}"))
        table = BINARY_TABLE if split == "val" else LAF_TABLE
        super().__init__(records=records, table=table, split=split, class_names=class_names, transform=transform)
        self.component_track = "anomaly" if split == "val" else "obstacle"


class RoadAnomalyDataset(_SmiycDataset):
    """RoadAnomaly (Lis et al., ICCV 2019; 60 frames): ``RoadAnomaly_jpg/frame_list.json`` (image file names),
    ``frames/<name>.jpg``, ``frames/<name>.labels/labels_semantic.png`` with 0 background and 2 anomaly
    (read from the first channel when the PNG is RGB, as RbA does). Not part of road-anomaly-benchmark:
    its scores persist as ``RoadAnomaly`` (our name).

    Args:
        root: ``RoadAnomaly_jpg`` or the folder holding it.
        split: ``test`` (the only split).
        check_size: refuse a copy without the 60 frames.
    """

    EXPECTED = "<root>/RoadAnomaly_jpg/{frame_list.json, frames/<name>.jpg, frames/<name>.labels/labels_semantic.png}"

    def __init__(self, *, root, split="test", check_size=True, class_names=(), transform=None):
        if split != "test":
            raise DatasetError(f"road_anomaly split {split!r} is unknown; it has one split, test")
        base = _dataset_dir(root, "RoadAnomaly_jpg", "frames", self.EXPECTED)
        listing = base / "frame_list.json"
        try:
            names = json.loads(listing.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{listing}: not a readable JSON list of frame file names ({exc}); expected layout: "
                               f"{self.EXPECTED}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{listing}: must hold a JSON list of image file names")
        _check_count("RoadAnomaly", len(names), 60, check_size)
        records = []
        for name in sorted(names):
            image = inside(base, base / "frames" / name, listing)
            label = inside(base, base / "frames" / f"{Path(name).stem}.labels" / "labels_semantic.png", listing)
            for p in (image, label):
                if not p.is_file():
                    raise DatasetError(f"{p}: listed in {listing} but not found; expected layout: {self.EXPECTED}")
            records.append(Record(name=Path(name).stem, image=image, label=label, group="RoadAnomaly"))
        super().__init__(records=records, table=ROAD_ANOMALY_TABLE, split=split, class_names=class_names, transform=transform)
        self.component_track = "anomaly"

    def read_label(self, path: Path) -> np.ndarray:
        return read_label(path, rgb_first_channel=True)
