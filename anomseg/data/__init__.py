"""Datasets: one sample contract, one entry point.

``build_dataset(name, root, split, **options)`` returns a dataset whose items are dicts with
``image`` uint8 (H, W, 3) RGB, ``semantic`` int64 (H, W) (255 = ignore), ``anomaly`` uint8 (H, W)
(0 inlier / 1 anomaly / 255 void) and ``name``; it has ``class_names`` and ``__len__``.
The synthetic set is written in the StreetHazards layout and read with ``"streethazards"``.
"""

from __future__ import annotations

from anomseg.data.base import LabelTable, Record, SegmentationDataset, resize_nearest
from anomseg.data.bdd_anomaly import BDDAnomalyDataset, prepare_bdd_anomaly
from anomseg.data.cityscapes import CityscapesDataset
from anomseg.data.folder import FolderAnomalyDataset
from anomseg.data.oodis import OodisLostAndFoundDataset
from anomseg.data.smiyc import (FishyscapesLAFDataset, LostAndFoundDataset, RoadAnomaly21Dataset, RoadAnomalyDataset,
                                RoadObstacle21Dataset)
from anomseg.data.streethazards import StreetHazardsDataset
from anomseg.data.synthetic import generate_synthetic
from anomseg.errors import DatasetError

DATASETS = {
    "cityscapes": CityscapesDataset,
    "streethazards": StreetHazardsDataset,
    "bdd_anomaly": BDDAnomalyDataset,
    "folder": FolderAnomalyDataset,
    # SegmentMeIfYouCan and neighbours (anomseg.data.smiyc)
    "road_anomaly21": RoadAnomaly21Dataset,
    "road_obstacle21": RoadObstacle21Dataset,
    "lost_and_found": LostAndFoundDataset,
    "fishyscapes_laf": FishyscapesLAFDataset,
    "road_anomaly": RoadAnomalyDataset,
    # OoDIS' anomaly instance labels of LostAndFound (anomseg.data.oodis)
    "oodis_lost_and_found": OodisLostAndFoundDataset,
}


class DatasetSection:
    """A config's dataset section as an option type: ``{name, root, options?, split?}`` (see :mod:`anomseg.options`)."""

    KEYS = ("name", "root", "options", "split")

    @staticmethod
    def describe() -> str:
        return "a dataset section {name: <one of the datasets>, root: <folder>, options: {...}}"

    @classmethod
    def check_option(cls, value) -> str | None:
        if not isinstance(value, dict):
            return cls.describe()
        unknown = [k for k in value if k not in cls.KEYS]
        if unknown:
            return f"{cls.describe()} (unknown key {unknown[0]!r})"
        if not isinstance(value.get("name"), str) or value["name"] not in DATASETS:
            return f"{cls.describe()} with name one of {', '.join(sorted(DATASETS))}"
        if not isinstance(value.get("root"), str):
            return f"{cls.describe()} with root a folder"
        if not isinstance(value.get("options", {}), dict):
            return f"{cls.describe()} with options a mapping"
        if value.get("split") is not None and not isinstance(value["split"], str):
            return f"{cls.describe()} with split a string"
        return None


def build_dataset(name: str, root, split: str = "train", **options) -> SegmentationDataset:
    """Build a dataset by name (one of :data:`DATASETS`); options go to its constructor."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}") from None
    try:
        return cls(root=root, split=split, **options)
    except TypeError as exc:
        raise DatasetError(f"dataset {name!r}: bad option ({exc})") from None


__all__ = [
    "DATASETS", "DatasetSection", "build_dataset", "generate_synthetic", "prepare_bdd_anomaly", "DatasetError",
    "LabelTable", "Record", "SegmentationDataset", "resize_nearest",
    "CityscapesDataset", "StreetHazardsDataset", "BDDAnomalyDataset", "FolderAnomalyDataset",
    "RoadAnomaly21Dataset", "RoadObstacle21Dataset", "LostAndFoundDataset", "FishyscapesLAFDataset", "RoadAnomalyDataset",
]
