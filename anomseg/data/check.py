"""``anomseg data check NAME ROOT``: is a download complete, in the official layout, and what each adapter reads?

For each split a full copy has (:data:`CHECKS`), the adapter is built (its layout and frame-list checks, one line
each with the expected tree), its frame count compared with the official one, and every frame checked: image and
label files present, image and label sizes equal (read from the headers), and with ``labels=True`` every label
decoded and its values checked against the adapter's table (the 0/1/255 vs 0/1/2 kind of mix-up). Problems come
back one line each, the same problem in many files folded into one line naming the first file and the count, each
with the fix (which archive to extract where). The synthetic set (a ``synthetic.json`` at its root) is held to the
counts it was generated with.

:func:`check_split` is the quick form (no label decoding) that ``anomseg eval`` runs on the split it evaluates before
anything is written: missing files and size mismatches stop it; a frame count other than the official one is a
warning (a subset may be evaluated on purpose) recorded in report.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from anomseg.errors import DatasetError

SYNTHETIC_SPLITS = {"train": "train", "val": "val", "test": "test"}


@dataclass(frozen=True)
class DatasetFacts:
    """What a complete download of one dataset holds: the splits to check, the official frame count of each (None:
    the adapter refuses another count itself, or there is no official count) and where its files come from."""

    splits: tuple
    counts: Callable[[dict], dict] = field(default=lambda options: {})
    download: str = ""


# counts: ../shared/docs/FORMATS.md (Cityscapes 2975 train / 500 val; StreetHazards 5125 / 1031 / 1500; BDD-Anomaly
# 6280 / 910 / 810); the SegmentMeIfYouCan and OoDIS adapters check their official counts themselves (SMIYC.md)
CHECKS: dict[str, DatasetFacts] = {
    "cityscapes": DatasetFacts(("train", "val", "test"), lambda o: {"train": 2975 - o.get("num_val", 10),
                                                                  "val": o.get("num_val", 10), "test": 500},
                               "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (cityscapes-dataset.com), both "
                               "extracted into ROOT"),
    "streethazards": DatasetFacts(("train", "val", "test"), lambda o: {"train": 5125, "val": 1031, "test": 1500},
                                  "streethazards_train.tar and streethazards_test.tar (hendrycks/anomaly-seg README), both "
                                  "extracted into ROOT"),
    "bdd_anomaly": DatasetFacts(("train", "val", "test"), lambda o: {"train": 6280, "val": 910, "test": 810},
                                "BDD100K's 10K images and sem_seg labels (bdd-data.berkeley.edu), then "
                                "anomseg.data.prepare_bdd_anomaly(ROOT)"),
    "road_anomaly21": DatasetFacts(("all", "validation"), download="dataset_AnomalyTrack.zip (segmentmeifyoucan.com), "
                                                                  "extracted into ROOT"),
    "road_obstacle21": DatasetFacts(("all", "validation"), download="dataset_ObstacleTrack.zip (segmentmeifyoucan.com), "
                                                                   "extracted into ROOT"),
    "lost_and_found": DatasetFacts(("test", "testNoKnown"), download="LostAndFound's leftImg8bit.zip and gtCoarse.zip "
                                                                    "(6d-vision.com) in ROOT/dataset_LostAndFound"),
    "fishyscapes_laf": DatasetFacts(("val",), download="LostAndFound (dataset_LostAndFound) and the Fishyscapes LAF "
                                                       "labels (dataset_FishyLAF) under ROOT"),
    "road_anomaly": DatasetFacts(("test",), download="RoadAnomaly_jpg.zip (road-anomaly-benchmark), extracted into ROOT"),
    "oodis_lost_and_found": DatasetFacts(("all",), download="LostAndFound (dataset_LostAndFound) and "
                                                            "fs_lost_found_instance.zip in ROOT/lost_found_instance"),
    "folder": DatasetFacts((None,)),
}


def _synthetic_counts(root: Path) -> dict | None:
    marker = Path(root) / "synthetic.json"
    if not marker.is_file():
        return None
    try:
        counts = json.loads(marker.read_text()).get("counts", {})
    except (OSError, ValueError):
        return None
    return {split: counts.get(key) for split, key in SYNTHETIC_SPLITS.items()}


def _size(path: Path) -> tuple[int, int] | str:
    """(W, H) from the header, or why not."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        return "missing"
    except Image.DecompressionBombError:
        return "too large to decode safely (more pixels than PIL.Image.MAX_IMAGE_PIXELS allows)"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__})"


def _frame_problems(ds, download: str, labels: bool, progress: bool) -> list[tuple[str, str]]:
    """(path, problem) of every frame of a built dataset (module docstring)."""
    from tqdm import tqdm

    fix = f"re-extract {download}" if download else "copy the file again"
    out = []
    for i, rec in enumerate(tqdm(ds.records, desc=f"checking {ds.split}", unit="frame", disable=not progress)):
        img = _size(rec.image)
        if isinstance(img, str):
            out.append((str(rec.image), f"image {img}; {fix}"))
            continue
        for what, path in (("label", rec.label), ("instance map", rec.instances)):
            if path is None:
                continue
            lab = _size(path)
            if isinstance(lab, str):
                out.append((str(path), f"{what} of frame {rec.name!r} {lab}; {fix}"))
            elif lab != img:
                out.append((str(path), f"{what} size differs from its image's (the files do not belong together); {fix}",
                            f"{what} {lab[0]}x{lab[1]}, image {rec.image.name} {img[0]}x{img[1]} (WxH)"))
            elif labels and what == "label":
                try:
                    ds.table.check(ds.read_label(path), path)
                except DatasetError as exc:
                    text = str(exc)
                    out.append((str(path), text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text))
    return out


def fold(problems: list[tuple]) -> list[str]:
    """One line per distinct problem: ``<path>: <problem> [(<detail>)]``, or ``<first path> and N more files:
    <problem> [(first: <detail>)]``; ``problems`` are (path, problem) or (path, problem, detail)."""
    groups: dict[str, list[tuple]] = {}
    for item in problems:
        groups.setdefault(item[1], []).append(item)
    lines = []
    for text, items in groups.items():
        path, detail = items[0][0], items[0][2] if len(items[0]) > 2 else ""
        if len(items) == 1:
            lines.append(f"{path}: {text}" + (f" ({detail})" if detail else ""))
        else:
            lines.append(f"{path} and {len(items) - 1} more files: {text}" + (f" (first: {detail})" if detail else ""))
    return lines


def check_split(ds, name: str, root, *, options: dict | None = None, labels: bool = False,
                progress: bool = False) -> tuple[list[str], list[str]]:
    """(problems, count warnings) of one built split of dataset ``name`` (built with ``options``; module docstring)."""
    facts = CHECKS.get(name, DatasetFacts((None,)))
    counts = _synthetic_counts(Path(root)) if name == "streethazards" else None
    expected = (counts if counts is not None else facts.counts(options or {})).get(ds.split)
    warnings = []
    if expected is not None and len(ds) != expected:
        kind = "the synthetic set was generated with" if counts is not None else "the official split has"
        warnings.append(f"{root}: {name} split {ds.split!r} has {len(ds)} frames, {kind} {expected}; a partial or "
                        f"wrong copy? {('re-extract ' + facts.download) if facts.download and counts is None else 'regenerate it'}")
    return fold(_frame_problems(ds, facts.download, labels, progress)), warnings


def check_dataset(name: str, root, splits=None, *, options: dict | None = None, labels: bool = True,
                  progress: bool = False) -> list[str]:
    """Every problem of a download of dataset ``name`` at ``root`` (module docstring), one line each; [] when
    complete."""
    from anomseg.data import DATASETS, build_dataset

    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    if not Path(root).is_dir():
        return [f"{root}: folder not found; give the folder the dataset was extracted into"]
    facts = CHECKS.get(name, DatasetFacts((None,)))
    lines = []
    for split in splits or facts.splits:
        try:
            ds = build_dataset(name, root, split, **(options or {}))
        except DatasetError as exc:
            text = str(exc)
            archive = facts.download.split(" ")[0] if facts.download else ""
            missing = "not found" in text or "found " in text or "no " in text.split(":", 1)[-1][:40]
            lines.append(f"{text} (a complete copy: {facts.download})" if archive and missing and archive not in text
                         else text)
            continue
        problems, warnings = check_split(ds, name, root, options=options, labels=labels, progress=progress)
        lines += warnings + problems
    return list(dict.fromkeys(lines))
