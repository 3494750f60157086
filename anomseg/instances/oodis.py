"""The OoDIS file formats: Cityscapes-encoded instance labels, the submission folder, COCO RLE results.

Facts (../shared/docs/FORMATS.md, "OoDIS"; kumuji/anomaly-benchmark-suite @ 110a360):

* Labels (``evaluation/instance.py``, ``instances2dict.py``): a value < 1000 is a Cityscapes label id (stuff,
  or a group of an instance label), a value >= 1000 an instance of label ``value // 1000``. Anomalies are
  scored as label 26 ("car": ``scoring_program/preprocess_files.py`` relabels every prediction to 26).
  Void = the label ids with ``ignoreInEval`` (``evaluation/helpers/labels.py``): 0-6, 9, 10, 14-16, 18, 29, 30.
* Submission (``verify_submission.py``, ``preprocess_files.py``): per image a text file
  ``<stem>_pred.txt`` whose lines are ``<png name> <label> <confidence>``, and next to it one binary PNG
  per instance named ``<stem>_<k>_1.png`` (any nonzero pixel is the mask; ``_1`` is replaced by the
  label 26). An empty text file is refused by the scorer; an all-zero mask is skipped, so "no instance"
  is one all-zero mask with confidence 0. ``<stem>`` is the GT file name without ``.png``
  (LostAndFound frames: ``<fid>_gtCoarse_instanceIds``; RoadAnomaly-style names: ``<name>_instanceIds``).
* COCO results (pycocotools): ``{"image_id", "category_id", "segmentation": {"size": [H, W], "counts"},
  "score"}`` with column-major run lengths starting with a run of zeros, compressed as pycocotools'
  ``rleToString`` does (5-bit groups + 48, a continuation bit 0x20, runs from the third on stored as the
  difference to the run two before).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from anomseg.files import make_dirs, write_text_atomic, write_with
from anomseg.instances.ap import ANOMALY_LABEL, GROUP, INSTANCE_LABELS
from anomseg.instances.extract import InstanceError, Instances

#: Cityscapes label ids with ignoreInEval (cityscapesScripts labels.py, as copied into the scorer)
VOID_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)
BACKGROUND_ID = 7  # "road": a non-void label without instances, what anomseg writes for background
MIN_REGION = 10


def target_from_cityscapes(ids, label: int = ANOMALY_LABEL, min_region_size: int = MIN_REGION):
    """Cityscapes-encoded instance labels -> (gt int32 (H, W), void bool (H, W), other labels with GT).

    ``gt``: k >= 1 for the k-th instance of ``label`` (ascending ids), -1 for ``label``'s group pixels
    (value == label), 0 elsewhere. ``void``: pixels whose value is a void label id. Other instance labels
    with an instance of at least ``min_region_size`` pixels are returned, as the scorer averages an AP
    of 0 for each of them (see :mod:`anomseg.instances.ap`)."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise InstanceError(f"Cityscapes instance ids: give int (H, W), got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64)
    gt = np.zeros(ids.shape, np.int32)
    values = np.unique(ids)
    k = 0
    other = set()
    for v in values:
        v = int(v)
        if v >= 1000 and v // 1000 == label:
            k += 1
            gt[ids == v] = k
        elif v == label:
            gt[ids == v] = GROUP
        elif v >= 1000 and v // 1000 in INSTANCE_LABELS and int((ids == v).sum()) >= min_region_size:
            other.add(v // 1000)
    void = np.isin(ids, VOID_IDS)
    return gt, void, sorted(other)


def cityscapes_from_target(gt, void, label: int = ANOMALY_LABEL) -> np.ndarray:
    """The inverse, for writing GT the scorer reads: uint16 (H, W) with instance k -> label * 1000 + k,
    groups -> label, void -> 0, everything else -> 7 (road)."""
    gt = np.asarray(gt)
    out = np.full(gt.shape, BACKGROUND_ID, np.int64)
    out[np.asarray(void, bool)] = 0
    out[gt == GROUP] = label
    inst = gt > 0
    if int(gt.max(initial=0)) >= 1000:
        raise InstanceError(f"{int(gt.max())} instances in one image: the Cityscapes encoding holds at most 999")
    out[inst] = label * 1000 + gt[inst]
    return out.astype(np.uint16)


def oodis_stem(frame: str, lost_and_found: bool = False) -> str:
    """The GT / submission stem of a frame: ``<fid>_gtCoarse_instanceIds`` or ``<name>_instanceIds``."""
    return f"{frame}_gtCoarse_instanceIds" if lost_and_found else f"{frame}_instanceIds"


def write_submission(folder: str | Path, stem: str, instances: Instances) -> Path:
    """One image's OoDIS submission files into ``folder``; returns the text file.

    Masks as 0 / 255 PNGs (``<stem>_<k>_1.png``, k from 0), confidences with every digit (``repr``), and
    one all-zero mask with confidence 0 when there is no instance (see the module docstring). The PNGs are
    written first, the text file last (atomically): a text file present means its image is complete."""
    folder = make_dirs(folder)
    lines = []
    if len(instances) == 0:
        h, w = instances.size
        instances = Instances(np.zeros((1, h, w), bool), np.zeros(1, np.float32))
    for k, (m, c) in enumerate(zip(instances.masks, instances.scores)):
        name = f"{stem}_{k}_1.png"
        write_with(folder / name, lambda tmp, m=m: Image.fromarray(m.astype(np.uint8) * 255).save(tmp, format="PNG"))
        lines.append(f"{name} 1 {float(c)!r}")
    return write_text_atomic(folder / f"{stem}_pred.txt", "\n".join(lines) + "\n")


def read_submission(txt: str | Path) -> Instances:
    """Read one image's submission back (masks nonzero, confidences the last token), as the scorer does."""
    txt = Path(txt)
    masks, scores = [], []
    for n, line in enumerate(txt.read_text().strip().split("\n"), 1):
        parts = line.split(" ")
        if len(parts) < 2:
            raise InstanceError(f"{txt}:{n}: expected '<png> <label> <confidence>', got {line!r}")
        masks.append(np.array(Image.open(txt.parent / parts[0]).convert("L")) != 0)
        scores.append(float(parts[-1]))
    return Instances(np.stack(masks), np.array(scores, np.float32))


def write_gt(path: str | Path, gt, void) -> Path:
    """Write ground truth as the scorer reads it: a 16-bit Cityscapes-encoded PNG."""
    enc = cityscapes_from_target(gt, void)
    return write_with(Path(path), lambda tmp: Image.fromarray(enc).save(tmp, format="PNG"))


# -- COCO run-length encoding ----------------------------------------------------------------------
def rle_counts(mask) -> list[int]:
    """Column-major run lengths of a bool (H, W) mask, starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return runs


def rle_string(counts: list[int]) -> str:
    """pycocotools' compressed string of run lengths (see the module docstring)."""
    out = []
    for i, x in enumerate(counts):
        x = int(x) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def coco_results(image_id, instances: Instances, category_id: int = 1) -> list[dict]:
    """COCO-style results of one image: one dict per instance with a compressed RLE mask."""
    h, w = instances.size
    return [{"image_id": image_id, "category_id": category_id, "score": float(c),
             "segmentation": {"size": [h, w], "counts": rle_string(rle_counts(m))}}
            for m, c in zip(instances.masks, instances.scores)]


def write_coco(path: str | Path, results: list[dict]) -> Path:
    return write_text_atomic(Path(path), json.dumps(results))
