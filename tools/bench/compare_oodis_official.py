"""Run the OoDIS scoring program itself on anomseg's exported instances and compare AP / AP50.

    python tools/bench/compare_oodis_official.py --official /path/to/anomaly-benchmark-suite
        --python /path/to/venv/bin/python [--sets 30] [--eval runs/demo/eval]

``--official``: a checkout of github.com/kumuji/anomaly-benchmark-suite (tested at 110a360); ``--python``: an
interpreter with NumPy 1.x and Pillow (the scorer calls ``np.in1d``, gone in NumPy 2.4, and its JSON cache
cannot write NumPy 2's integer scalars; tested with numpy 1.26.4, Pillow 13.0.0). The official code runs in
that interpreter, in its own process. For each random
set (ties, duplicates on one object, overlapping predictions, tiny regions, void, groups, other Cityscapes
instance labels, images without a prediction) it writes Cityscapes-encoded GT PNGs and anomseg's OoDIS
submission files (:func:`anomseg.instances.oodis.write_submission`), runs the official ``scoring_program/
evaluate.py`` ``main`` on them (in a scratch folder: it writes ``matches.json`` into the working directory and
``gtinstances.json`` into the GT folder) and :class:`anomseg.instances.InstanceAP` on the same instances, and
prints both sides. ``--eval``: also an evaluation folder written with ``protocol: [..., instances]`` and
``instances.export: [oodis]`` (the demo's): its exported submission of every method is renamed into the
scorer's file-name pattern, scored officially against the split's instance GT, and compared with the AP / AP50
its ``report.json`` holds. Last line: ``max |difference| <x>`` over every AP / AP50 compared (in percent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from anomseg.instances import InstanceAP, Instances
from anomseg.instances.oodis import read_submission, target_from_cityscapes, write_gt, write_submission


RUN = """
import sys
sys.path.insert(0, sys.argv[1])
import evaluate  # the checkout's scoring_program/evaluate.py
evaluate.main(sys.argv[2], sys.argv[3], sys.argv[4])
"""


def load_official(root: Path, python: str):
    scoring = root / "scoring_program"
    if not (scoring / "evaluate.py").is_file():
        sys.exit(f"{root}: not a checkout of kumuji/anomaly-benchmark-suite (no scoring_program/evaluate.py)")
    return python, str(scoring)


def official_scores(official, gt_dir: Path, sub_dir: Path, work: Path) -> dict:
    out = work / "output"
    python, scoring = official
    # in the scratch folder: the evaluator writes matches.json into the working directory
    res = subprocess.run([python, "-c", RUN, scoring, str(sub_dir), str(gt_dir), str(out)], cwd=work,
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"the official scorer failed on {sub_dir}:\n{res.stderr[-3000:]}")
    vals = {}
    for line in (out / "scores.txt").read_text().splitlines():
        k, v = line.split(":")
        vals[k.strip()] = float(v)
    return vals


def stem(i: int) -> str:
    """A frame name the scorer's file-name parser reads (<city>_<seq>_<frame>_gtCoarse_instanceIds)."""
    return f"s_000000_{i:06d}_gtCoarse_instanceIds"


def blob(rng, h, w, cy, cx, ry, rx) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (int(cx), int(cy)), (max(1, int(rx)), max(1, int(ry))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def random_set(rng, images: int, h: int = 48, w: int = 64):
    """Random GT (Cityscapes-encoded) and predictions for ``images`` images."""
    out = []
    for _ in range(images):
        enc = np.full((h, w), 7, np.int64)  # road
        if rng.random() < 0.5:
            enc[: int(rng.integers(1, 8))] = 0  # void band (unlabeled)
        if rng.random() < 0.3:
            enc[blob(rng, h, w, rng.integers(h), rng.integers(w), 4, 6)] = 3  # out of roi: void
        gts = []
        for k in range(int(rng.integers(0, 4))):
            size = rng.choice([1.2, 3, 6, 9])  # some below 10 px
            m = blob(rng, h, w, rng.integers(h), rng.integers(w), size, size * rng.uniform(0.6, 1.6))
            enc[m] = 26001 + k
            gts.append(m)
        if rng.random() < 0.2:
            enc[blob(rng, h, w, rng.integers(h), rng.integers(w), 3, 5)] = 26  # a car group
        if rng.random() < 0.1:
            enc[blob(rng, h, w, rng.integers(h), rng.integers(w), 4, 4)] = 24001  # a person instance
        preds, confs = [], []
        for m in gts:
            if not m.any():
                continue
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 (a duplicate) predictions per object
                shift = rng.integers(-3, 4, 2)
                p = np.roll(m, tuple(shift), (0, 1))
                if rng.random() < 0.5:
                    p = cv2.dilate(p.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                preds.append(p)
                confs.append(rng.random())
        for _ in range(int(rng.integers(0, 3))):  # false positives, some tiny, some on void
            preds.append(blob(rng, h, w, rng.integers(h), rng.integers(w), rng.choice([1, 3, 5]), 4))
            confs.append(rng.random())
        confs = [round(c, 1) if rng.random() < 0.5 else c for c in confs]  # ties
        inst = (Instances(np.stack(preds), np.array(confs, np.float32)) if preds
                else Instances.empty(h, w))
        out.append((enc, inst))
    return out


def compare_set(official, cases, work: Path) -> tuple[dict, dict]:
    gt_dir, sub_dir = work / "gt", work / "submission"
    gt_dir.mkdir(parents=True)
    sub_dir.mkdir(parents=True)
    ap = InstanceAP()
    for i, (enc, inst) in enumerate(cases):
        Image.fromarray(enc.astype(np.uint16)).save(gt_dir / f"{stem(i)}.png")
        write_submission(sub_dir, stem(i), inst)
        gt, void, other = target_from_cityscapes(enc)
        ap.add(read_submission(sub_dir / f"{stem(i)}_pred.txt"), gt, void, other)
    mine = ap.compute()
    theirs = official_scores(official, gt_dir, sub_dir, work)
    return {"AP": 100 * mine["AP"], "AP50": 100 * mine["AP50"]}, theirs


def compare_eval(official, eval_dir: Path, work: Path) -> list[tuple[str, dict, dict]]:
    from anomseg.data import build_dataset

    report = json.loads((eval_dir / "report.json").read_text())
    d = report["config"]["data"]
    ds = build_dataset(d["name"], d["root"], d["split"], **d.get("options", {}))
    gt_dir = work / "gt"
    gt_dir.mkdir(parents=True)
    names = []
    for i in range(len(ds)):
        s = ds[i]
        write_gt(gt_dir / f"{stem(i)}.png", s["instances"], s["anomaly"] == 255)
        names.append(ds.records[i].name.replace("/", "_"))
    rows = []
    for method, r in report["methods"].items():
        src = Path(r["instances"]["oodis"])
        sub = work / f"sub_{method}"
        for i, n in enumerate(names):
            txt = next(src.glob(f"{n}_*instanceIds_pred.txt"))
            write_submission(sub, stem(i), read_submission(txt))
        w = work / f"run_{method}"
        w.mkdir()
        theirs = official_scores(official, gt_dir, sub, w)
        mine = {"AP": 100 * (r["instances"]["AP"] or 0.0), "AP50": 100 * (r["instances"]["AP50"] or 0.0)}
        rows.append((method, mine, theirs))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, type=Path, help="checkout of kumuji/anomaly-benchmark-suite")
    ap.add_argument("--python", default=sys.executable, help="interpreter with NumPy 1.x + Pillow for the official code")
    ap.add_argument("--sets", type=int, default=30, help="random sets")
    ap.add_argument("--images", type=int, default=6, help="images per random set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", type=Path, default=None, help="an evaluation folder with protocol instances + export oodis")
    a = ap.parse_args(argv)
    official = load_official(a.official.resolve(), a.python)
    rng = np.random.default_rng(a.seed)
    diffs = []
    print(f"{'case':>14} {'anomseg AP':>11} {'official AP':>12} {'anomseg AP50':>13} {'official AP50':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(a.sets):
            mine, theirs = compare_set(official, random_set(rng, a.images), Path(tmp) / f"set{k}")
            print(f"{'random ' + str(k):>14} {mine['AP']:11.6f} {theirs['AP']:12.6f} {mine['AP50']:13.6f} {theirs['AP50']:14.6f}")
            diffs += [abs(mine[x] - theirs[x]) for x in ("AP", "AP50")]
        if a.eval is not None:
            for method, mine, theirs in compare_eval(official, a.eval, Path(tmp) / "eval"):
                print(f"{method:>14} {mine['AP']:11.6f} {theirs['AP']:12.6f} {mine['AP50']:13.6f} {theirs['AP50']:14.6f}")
                diffs += [abs(mine[x] - theirs[x]) for x in ("AP", "AP50")]
    print(f"compared {len(diffs)} numbers (percent)")
    print(f"max |difference| {max(diffs):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
