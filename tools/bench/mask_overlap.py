"""How much a Mask2Former's masks overlap, on anomaly and on inlier pixels of a split.

    python tools/bench/mask_overlap.py runs/demo/m2f/checkpoints/best.pth --data runs/demo/data [--split test]

Prints, averaged over the anomaly pixels and over the inlier pixels (void excluded): the sum over queries
of sigmoid(m_q) (1 where the masks partition the image), the summed class mass sum_c S_c of the semantic
aggregate (what RbA's -sum_c tanh(S_c) reads), and max_c S_c (what Mask2Anomaly's 1 - max reads). RbA,
EAM and UNO assume the first two are low on anomalies; where they are higher than on inliers those scores
rank anomalies as the most normal pixels.
"""

from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from anomseg.data import build_dataset
from anomseg.models import build_from_checkpoint
from anomseg.scores.masks import mask_probabilities, semantic_aggregate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="an anomseg checkpoint of a mask2former backbone")
    p.add_argument("--data", required=True, help="dataset root (streethazards layout, e.g. runs/demo/data)")
    p.add_argument("--dataset", default="streethazards")
    p.add_argument("--split", default="test")
    a = p.parse_args(argv)
    model, _ = build_from_checkpoint(a.checkpoint)
    model.eval()
    ds = build_dataset(a.dataset, a.data, a.split)
    sums = {k: torch.zeros(2, dtype=torch.float64) for k in ("sum_q sigmoid(m_q)", "sum_c S_c", "max_c S_c")}
    counts = torch.zeros(2, dtype=torch.float64)
    for i in tqdm(range(len(ds)), desc="images"):
        s = ds[i]
        x = torch.from_numpy(s["image"])[None]
        with torch.no_grad():
            q = model(x).queries
        size = tuple(x.shape[1:3])
        S, mp = semantic_aggregate(q, size)[0], mask_probabilities(q, size)[0]
        groups = [torch.from_numpy(s["anomaly"] == 1), torch.from_numpy(s["anomaly"] == 0)]
        for j, g in enumerate(groups):
            counts[j] += g.sum()
            for k, v in (("sum_q sigmoid(m_q)", mp.sum(0)), ("sum_c S_c", S.sum(0)), ("max_c S_c", S.amax(0))):
                sums[k][j] += v[g].double().sum()
    print(f"{a.checkpoint} on {a.dataset}/{a.split}: {int(counts[0])} anomaly, {int(counts[1])} inlier pixels")
    for k, v in sums.items():
        print(f"{k:20s} anomaly {v[0] / counts[0]:.3f}   inlier {v[1] / counts[1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
