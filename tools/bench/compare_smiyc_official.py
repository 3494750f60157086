"""Run road-anomaly-benchmark itself on anomseg's exported score files and compare with ``protocol: smiyc``.

    python tools/bench/compare_smiyc_official.py --rab /path/to/road-anomaly-benchmark --python /path/to/rab-venv/bin/python

``--rab``: a checkout of github.com/SegmentMeIfYouCan/road-anomaly-benchmark (tested at 1c7804e); ``--python``:
an interpreter with its pinned requirements (numpy 1.23.3, matplotlib 3.6.0, h5py 3.7.0, scipy 1.9.1, ...).
Writes a RoadObstacle21-style fixture tree (validation-scene frames, road ROI and obstacles in the labels),
random score maps (continuous, float16-tied, frames sharing their maximum), scores them with
``AnomalyMetrics(protocol="smiyc", components=True)``, exports them with :class:`SmiycExporter`, runs the
official ``metric PixBinaryClass`` and ``metric SegEval-ObstacleTrack`` (``--no-parallel``: frames in sorted
order) on the exported files, and prints both sides. Also checks anomseg's frame lists against the checkout.
Last line: ``smiyc/official: max abs difference <d> over <n> numbers``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from anomseg.data import build_dataset, smiyc_frames
from anomseg.engine.export import SmiycExporter
from anomseg.metrics import AnomalyMetrics, smiyc

SAME_NUMPY = """
import importlib.util, json, sys
import h5py, numpy as np
from PIL import Image
spec = importlib.util.spec_from_file_location("smiyc", sys.argv[1])
smiyc = importlib.util.module_from_spec(spec); spec.loader.exec_module(smiyc)
frames = []
for score, label in json.loads(sys.argv[2]):
    with h5py.File(score, "r") as f:
        s16 = np.squeeze(f["value"][()])
    frames.append(smiyc.frame_bins(s16, np.asarray(Image.open(label))))
r = smiyc.pix_binary_class(frames)
print(json.dumps({"numpy": np.__version__, **{k: r[k] for k in ("aupr", "auroc", "fpr95", "best_f1_threshold")}}))
"""

PAIRS = [("aupr", "PixBinaryClass", "area_PRC"), ("auroc", "PixBinaryClass", "area_ROC"),
         ("fpr95", "PixBinaryClass", "tpr95_fpr"), ("best_f1_threshold", "PixBinaryClass", "best_f1_threshold"),
         ("sIoU", "SegEval-ObstacleTrack", "sIoU_gt"), ("PPV", "SegEval-ObstacleTrack", "prec_pred"),
         ("mean_F1", "SegEval-ObstacleTrack", "f1_mean")]


def write_tree(root: Path, rng, frames: int, h: int, w: int) -> None:
    base = root / "dataset_ObstacleTrack"
    (base / "images").mkdir(parents=True)
    (base / "labels_masks").mkdir(parents=True)
    # validation_1 .. validation_N: the validation split drops the validation_19 / _21.._29 prefixes
    for i in range(1, frames + 1):
        fid = f"validation_{i}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / "images" / f"{fid}.webp", lossless=True)
        label = np.full((h, w), 255, np.uint8)
        top = int(rng.integers(h // 4, h // 2))
        label[top:] = 0  # the road
        for _ in range(int(rng.integers(0, 4))):  # obstacles of assorted sizes, some tiny (voided by SegEval)
            y, x = int(rng.integers(top, h - 2)), int(rng.integers(0, w - 2))
            dy, dx = int(rng.integers(1, 14)), int(rng.integers(1, 20))
            label[y:y + dy, x:x + dx] = 1
        Image.fromarray(label).save(base / "labels_masks" / f"{fid}_labels_semantic.png")


def score_map(rng, anomaly: np.ndarray, kind: int) -> np.ndarray:
    h, w = anomaly.shape
    s = rng.normal(size=(h, w)) * 0.15 + 0.3
    blob = np.zeros((h, w))
    blob[anomaly == 1] = 0.5
    s = s + blob + (rng.random((h, w)) < 0.002) * 0.6  # scattered false alarms
    if kind == 1:
        s = np.round(s * 20) / 20  # heavy ties
    if kind == 2:
        s = np.clip(s, 0, 1)  # many frames share the maximum 1.0
    return s.astype(np.float32)


def frame_list_check(rab: Path) -> list[str]:
    """anomseg's frame lists against the checkout's tracks_extra.py (AnomalyTrack splits, FishyLAF val)."""
    src = (rab / "road_anomaly_benchmark" / "datasets" / "tracks_extra.py").read_text()
    problems = []
    start = src.index("FRAME_IDS = {", src.index("class RoadAnomalyByClass"))
    for split, ours in smiyc_frames.ANOMALY_TRACK_SPLITS.items():
        i = src.index(f"'{split}': [", start)
        ref = sorted(re.findall(r"'([^']+)'", src[i + len(split) + 4: src.index("],", i)]))
        if ref != ours:
            problems.append(f"AnomalyTrack-{split}")
    i = src.index("'Anomaly-val': {")
    if sorted(re.findall(r'"([^"]+)"', src[i: src.index("},", i)])) != smiyc_frames.FISHY_LAF_VAL:
        problems.append("FishyLAFAnomaly-val")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rab", required=True, type=Path, help="road-anomaly-benchmark checkout")
    ap.add_argument("--python", default=sys.executable, help="interpreter with its pinned requirements")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="smiyc_compare_"))
    write_tree(work / "datasets", rng, args.frames, args.height, args.width)
    ds = build_dataset("road_obstacle21", work / "datasets", "validation", check_size=False)
    outputs = work / "outputs"
    exporter = SmiycExporter(outputs)
    ours, exact_pooled = {}, {}
    for method, kind in (("anomseg-continuous", 0), ("anomseg-ties", 1), ("anomseg-clipped", 2)):
        m = AnomalyMetrics("smiyc", components=True, component_track="obstacle")
        exact = AnomalyMetrics("pooled", exact=True)
        for i in range(len(ds)):
            s = ds[i]
            score = score_map(rng, s["anomaly"], kind)
            m.update(score, s["anomaly"], ids=[i])
            exact.update(score, s["anomaly"], ids=[i])
            exporter.write(method, ds.group(i), ds.records[i].name, score, s["anomaly"].shape)
        ours[method] = m.compute()
        exact_pooled[method] = exact.compute()
    env = {**os.environ, "DIR_DATASETS": str(work / "datasets"), "DIR_OUTPUTS": str(outputs)}
    theirs, same_numpy = {}, {}
    for method in ours:
        for metric in ("PixBinaryClass", "SegEval-ObstacleTrack"):
            cmd = [args.python, "-m", "road_anomaly_benchmark", "metric", metric, method, "ObstacleTrack-validation",
                   "--no-parallel", "--no-frame-vis"]
            run = subprocess.run(cmd, cwd=args.rab, env=env, capture_output=True, text=True)
            if run.returncode != 0:
                print(run.stdout[-2000:], run.stderr[-4000:])
                print(f"road-anomaly-benchmark failed: {' '.join(cmd)}")
                return 1
        read = ("import h5py, json, sys\n"
                "out = {}\n"
                "for key, path in json.loads(sys.argv[1]).items():\n"
                "    with h5py.File(path, 'r') as f:\n"
                "        out[key] = {k: float(v) for k, v in f.attrs.items() if not isinstance(v, (str, bytes))}\n"
                "        out[key].update({k: float(f[k][()]) for k in f.keys() if f[k].shape == ()})\n"
                "print(json.dumps(out))\n")
        files = {"PixBinaryClass": str(outputs / "PixBinaryClass" / "data" / f"PixClassCurve_{method}_ObstacleTrack-validation.hdf5"),
                 "SegEval-ObstacleTrack": str(outputs / "SegEval-ObstacleTrack" / "data" /
                                              f"SegEval-ObstacleTrackResults_{method}_ObstacleTrack-validation.hdf5")}
        got = subprocess.run([args.python, "-c", read, json.dumps(files)], capture_output=True, text=True, check=True)
        theirs[method] = json.loads(got.stdout)
        # anomseg's arithmetic run by the reference's interpreter (its numpy, its sort) on the exported files
        ours_there = subprocess.run([args.python, "-c", SAME_NUMPY, str(Path(smiyc.__file__)), json.dumps(
            [[str(exporter.path(method, ds.group(i), ds.records[i].name)), str(ds.records[i].label)] for i in range(len(ds))])],
            capture_output=True, text=True, check=True)
        same_numpy[method] = json.loads(ours_there.stdout)
    worst, worst_same, count = 0.0, 0.0, 0
    print(f"fixture: {len(ds)} frames of {args.height}x{args.width} ({work})")
    for method in ours:
        print(f"\n{method}")
        there = same_numpy[method]
        print(f"{'number':<20}{'anomseg, numpy ' + np.__version__:>22}{'road-anomaly-benchmark':>26}{'difference':>12}"
              f"{'anomseg, numpy ' + there['numpy']:>24}{'difference':>12}")
        for key, metric, field in PAIRS:
            a, b = ours[method][key], theirs[method][metric][field]
            d = abs(a - b)
            c = there.get(key)
            worst, count = max(worst, d), count + 1
            if c is not None:
                worst_same = max(worst_same, abs(c - b))
            print(f"{key:<20}{a:>22.16f}{b:>26.16f}{d:>12.2e}" + (f"{c:>24.16f}{abs(c - b):>12.2e}" if c is not None else ""))
        e = exact_pooled[method]
        print(f"  exact pooled (float32 scores, every pixel): AUROC {e['auroc']:.6f}  AP {e['aupr']:.6f}  "
              f"FPR95 {e['fpr95']:.6f}")
        if ours[method].get("order_dependent"):
            print("  (ties at the top threshold: the official value depends on numpy's sort order, see anomseg.metrics.smiyc)")
    problems = frame_list_check(args.rab)
    print(f"\nframe lists: {'all equal the checkout' if not problems else 'DIFFER: ' + ', '.join(problems)}")
    print(f"same numpy as the reference: max abs difference {worst_same:.3g}")
    print(f"smiyc/official: max abs difference {worst:.3g} over {count} numbers")
    return 0 if worst_same < 1e-12 and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
