"""Write a synthetic street-scene dataset in the StreetHazards layout.

Every image is a pure function of ``(seed, split, index)`` (its own ``numpy`` generator seeded
by a ``SeedSequence`` of those), so the dataset is identical whatever the number of worker
processes. Anomalies (the kinds of :data:`sprites.ANOMALY_KINDS`) appear only in ``val`` and
``test``; a separate pool of outlier objects of other kinds (:data:`sprites.OUTLIER_KINDS`) is
written to ``outliers/`` for training-time outlier exposure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from anomseg.files import make_dirs, write_text_atomic
from anomseg.data.synthetic import sprites as sp
from anomseg.data.synthetic.scene import draw_outlier, draw_scene
from anomseg.errors import AnomsegError, DatasetError

GENERATOR_VERSION = 2  # 2: anomaly instance ids (instances/), the images unchanged
MARKER = "synthetic.json"
# split -> (top folder, images subfolder, towns, odgt name); towns as in StreetHazards.
SPLIT_LAYOUT = {
    "train": ("train", "training", ("t1", "t2", "t3"), "training.odgt"),
    "val": ("train", "validation", ("t4",), "validation.odgt"),
    "test": ("test", "test", ("t5", "t6"), "test.odgt"),
}
SPLIT_CODE = {"train": 0, "val": 1, "test": 2, "outliers": 3}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODE[split], index]))


def _town_of(split: str, index: int, count: int) -> str:
    towns = SPLIT_LAYOUT[split][2]
    per = -(-count // len(towns))
    return towns[min(index // per, len(towns) - 1)]


def _write_png(path: Path, arr: np.ndarray) -> None:
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), arr):
        raise DatasetError(f"{path}: could not write image; check free disk space and permissions")


def _scene_job(args) -> dict:
    root, seed, split, index, count, height, width = args
    rng = _rng(seed, split, index)
    n_anom = int(rng.integers(1, 4)) if split in ("val", "test") else 0
    image, label, instances = draw_scene(rng, height, width, anomalies=n_anom, with_instances=True)
    top, sub, _, _ = SPLIT_LAYOUT[split]
    town = _town_of(split, index, count)
    rel_img = Path(top) / "images" / sub / town / f"{index}.png"
    rel_seg = Path(top) / "annotations" / sub / town / f"{index}.png"
    _write_png(Path(root) / rel_img, image)
    _write_png(Path(root) / rel_seg, label)
    entry = {"dbName": "StreetHazards-synthetic", "width": width, "height": height,
             "fpath_img": rel_img.as_posix(), "fpath_segm": rel_seg.as_posix()}
    if n_anom:  # anomaly instance ids (uint16 PNG, 0 none): the instance protocol's ground truth
        rel_inst = Path(top) / "instances" / sub / town / f"{index}.png"
        _write_png(Path(root) / rel_inst, instances)
        entry["fpath_inst"] = rel_inst.as_posix()
    return entry


def _outlier_job(args) -> None:
    root, seed, index, min_size, max_size = args
    rng = _rng(seed, "outliers", index)
    kinds = tuple(sp.OUTLIER_KINDS)
    kind = kinds[rng.integers(len(kinds))]
    image, mask = draw_outlier(rng, kind, int(rng.integers(min_size, max_size + 1)))
    _write_png(Path(root) / "outliers" / "images" / f"{index}.png", image)
    _write_png(Path(root) / "outliers" / "masks" / f"{index}.png", mask)


def generate_synthetic(
    root: str | Path,
    *,
    seed: int = 0,
    num_train: int = 300,
    num_val: int = 50,
    num_test: int = 150,
    num_outliers: int = 200,
    height: int = 256,
    width: int = 512,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Generate the synthetic street-scene dataset under ``root`` (StreetHazards layout).

    Writes ``train/``, ``test/``, the three ``.odgt`` indexes (one JSON array line, as the CAOS
    script writes them; val / test entries also name their anomaly instance ids, ``fpath_inst``:
    ``<top>/instances/<sub>/<town>/<n>.png``, uint16, 0 none, k the k-th anomalous object), ``outliers/{images,masks}/<n>.png`` (mask 1 = object) and
    ``synthetic.json`` (the resolved settings). If ``root`` already holds a complete set made with
    the same settings nothing is written; a set made with other settings raises DatasetError.

    Args:
        root: output folder (created).
        seed: dataset seed; the same seed and settings give byte-identical files.
        num_train, num_val, num_test: images per split (val/test carry 1-3 anomalies each).
        num_outliers: objects in the outlier-exposure pool.
        height, width: image size.
        workers: processes (default: the CPU count); does not change the output.
        progress: show a progress bar.
    Returns:
        the settings and counts written to ``synthetic.json``.
    """
    root = Path(root)
    config = {
        "generator_version": GENERATOR_VERSION, "seed": seed, "height": height, "width": width,
        "counts": {"train": num_train, "val": num_val, "test": num_test, "outliers": num_outliers},
        "anomaly_kinds": list(sp.ANOMALY_KINDS), "outlier_kinds": list(sp.OUTLIER_KINDS),
        "class_raw_values": sp.RAW,
    }
    for name, n in config["counts"].items():
        if n < (0 if name == "outliers" else 1):
            raise DatasetError(f"num_{name}={n}: need at least {0 if name == 'outliers' else 1}; pass --{name} "
                               f"{0 if name == 'outliers' else 1} or more")
    if height < 32 or width < 32:
        raise DatasetError(f"image size {height}x{width} is too small; use at least 32x32")
    marker = root / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("complete") and {k: old.get(k) for k in config} == config:
            return old
        if {k: old.get(k) for k in config} != config:
            raise DatasetError(f"{root}: holds a synthetic set made with other settings ({marker}); "
                               f"choose another folder or delete this one")
    elif root.is_dir() and any(root.iterdir()):
        raise DatasetError(f"{root}: folder is not empty and holds no {MARKER}; choose an empty or new folder")
    make_dirs(root)
    write_text_atomic(marker, json.dumps({**config, "complete": False}, indent=2) + "\n")

    for split, (top, sub, towns, _) in SPLIT_LAYOUT.items():
        for town in towns:
            for kind in ("images", "annotations") + (("instances",) if split != "train" else ()):
                make_dirs((root / top / kind / sub / town))
    make_dirs((root / "outliers" / "images"))
    make_dirs((root / "outliers" / "masks"))

    jobs = [(str(root), seed, split, i, config["counts"][split], height, width)
            for split in SPLIT_LAYOUT for i in range(config["counts"][split])]
    out_jobs = [(str(root), seed, i, 24, max(32, min(height, width) // 2)) for i in range(num_outliers)]
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    with tqdm(total=len(jobs) + len(out_jobs), desc="synthetic scenes", disable=not progress) as bar:
        if workers == 1:
            entries = []
            for job in jobs:
                entries.append(_scene_job(job))
                bar.update()
            for job in out_jobs:
                _outlier_job(job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                entries = []
                for entry in pool.map(_scene_job, jobs, chunksize=4):
                    entries.append(entry)
                    bar.update()
                for _ in pool.map(_outlier_job, out_jobs, chunksize=8):
                    bar.update()
    seconds = time.perf_counter() - t0

    by_split = {split: [e for e, j in zip(entries, jobs) if j[2] == split] for split in SPLIT_LAYOUT}
    for split, (_, _, _, odgt) in SPLIT_LAYOUT.items():
        write_text_atomic(root / odgt, json.dumps(by_split[split]) + "\n")
    meta = {**config, "complete": True, "seconds": round(seconds, 2)}
    write_text_atomic(marker, json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv=None) -> int:
    """Command line: ``python datasets/make_synthetic.py ROOT [--seed ...]``; bad input -> one line, exit 2."""
    p = argparse.ArgumentParser(description="Generate the synthetic street-scene dataset (StreetHazards layout).")
    p.add_argument("root", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=300, help="training images")
    p.add_argument("--val", type=int, default=50, help="validation images (with anomalies)")
    p.add_argument("--test", type=int, default=150, help="test images (with anomalies)")
    p.add_argument("--outliers", type=int, default=200, help="outlier-exposure objects")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    try:
        meta = generate_synthetic(a.root, seed=a.seed, num_train=a.train, num_val=a.val, num_test=a.test,
                                  num_outliers=a.outliers, height=a.height, width=a.width, workers=a.workers)
    except (AnomsegError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = meta["counts"]
    print(f"synthetic set in {a.root}: {c['train']} train / {c['val']} val / {c['test']} test images, "
          f"{c['outliers']} outlier objects ({meta.get('seconds', 0)} s)")
    return 0