"""protocol: smiyc against the official algorithm restated here from ../shared/docs/SMIYC.md (sections 3, 4).

The restatement is written from the document's description, not from anomseg.metrics.smiyc: per-frame
bins by explicit comparisons, the frames combined and collapsed point by point, SegEval by per-component
loops over scipy.ndimage labels.
"""

import math

import numpy as np
import pytest
from scipy import ndimage

from anomseg.metrics import AnomalyMetrics, MetricInputError

# -- the official algorithm, restated -----------------------------------------------------------


def ref_frame(s16, label):
    """SMIYC.md 3, steps 1-4: (thresholds, tp, fp) of one frame, the frame's bins from high to low."""
    roi = label < 255
    p = s16[roi]
    y = label[roi] != 0
    pos, neg = p[y], p[~y]
    vmin, vmax = float(p.min()), float(p.max())
    # numpy 1.23 (the pin): the range is a float16 difference, eps and the outer edges float64
    eps = max(float(np.float16(p.max() - p.min())) * 0.01, 0.01)
    edges = {vmin - eps, vmax + eps}
    for v in (pos, neg):
        if v.size:
            edges.update(np.quantile(v, np.linspace(0, 1, min(384, v.size))).tolist())
    E = sorted(edges)
    out = []
    for k in range(len(E) - 1):
        lo, hi = E[k], E[k + 1]
        last = k == len(E) - 2
        inside = lambda v: np.count_nonzero((v >= lo) & ((v <= hi) if last else (v < hi)))  # noqa: E731
        out.append((lo, inside(pos.astype(np.float64)), inside(neg.astype(np.float64))))
    return out[::-1], pos.size, neg.size


def ref_pix_binary_class(frames):
    """SMIYC.md 3, steps 5-13."""
    triples = [t for f, _, _ in frames for t in f]
    P = sum(f[1] for f in frames)
    N = sum(f[2] for f in frames)
    thr = np.array([t[0] for t in triples])
    order = np.argsort(thr)[::-1]  # "numpy's default quicksort, reversed"
    t_sorted = [triples[i] for i in order]
    cum, tp, fp = [], 0.0, 0.0
    for t, a, b in t_sorted:
        tp, fp = tp + a, fp + b
        cum.append((t, tp, fp))
    keep = [0] + [i for i in range(len(cum) - 1) if cum[i][0] != cum[i + 1][0]] + [len(cum) - 1]
    pts = [cum[i] for i in keep]
    if pts[0][1] != 0 or pts[0][2] != 0:
        pts = [(max(p[0] for p in pts) + 1, 0.0, 0.0)] + pts
    tpr = [p[1] / P for p in pts]
    fpr = [p[2] / N for p in pts]
    prec = [p[1] / (p[1] + p[2]) if p[1] + p[2] > 0 else 1.0 for p in pts]
    ap = sum((tpr[k] - tpr[k - 1]) * prec[k] for k in range(1, len(pts)))
    auroc = sum((fpr[k] - fpr[k - 1]) * (tpr[k] + tpr[k - 1]) / 2 for k in range(1, len(pts)))
    first = next((k for k, v in enumerate(tpr) if v >= 0.95), None)
    fpr95 = fpr[first] if first is not None else 1.0
    f1 = [2 * p[1] / (2 * p[1] + p[2] + (P - p[1])) for p in pts]
    best = f1.index(max(f1))
    return {"aupr": ap, "auroc": auroc, "fpr95": fpr95, "best_f1_threshold": pts[best][0]}


def ref_segeval(maps, labels, thr, segsize, instsize):
    """SMIYC.md 4: s > thr (float16), 8-connected components, sizes, sIoU / PPV, F1 over 11 thresholds."""
    eight = np.ones((3, 3), int)
    siou_all, prec_all = [], []
    ts = np.linspace(0.25, 0.75, 11)
    tp = np.zeros(11)
    fn = np.zeros(11)
    fpc = np.zeros(11)
    for s16, label in zip(maps, labels):
        pred = (s16 > np.float16(thr)) & (label != 255)
        gt_inst, n_gt = ndimage.label(label == 1, eight)
        pr_inst, n_pr = ndimage.label(pred, eight)
        for c in range(1, n_pr + 1):
            if np.count_nonzero(pr_inst == c) < segsize:
                pr_inst[pr_inst == c] = 0
        label = label.copy()
        for c in range(1, n_gt + 1):
            if np.count_nonzero(gt_inst == c) < instsize:
                label[gt_inst == c] = 255
        roi = label < 255
        g, q = gt_inst[roi], pr_inst[roi]
        siou = []
        for i in np.unique(g[g > 0]):
            touching = np.unique(q[(g == i) & (q > 0)])
            inter = np.count_nonzero((g == i) & np.isin(q, touching))
            adj = np.count_nonzero(~np.isin(g, [0, i]) & np.isin(q, touching))
            siou.append(inter / (np.count_nonzero(np.isin(q, touching)) + np.count_nonzero(g == i) - inter - adj))
        prec = []
        for j in np.unique(q[q > 0]):
            prec.append(np.count_nonzero((q == j) & (g > 0)) / np.count_nonzero(q == j))
        siou_all += siou
        prec_all += prec
        for k, t in enumerate(ts):
            tp[k] += sum(v >= t for v in siou)
            fn[k] += sum(v < t for v in siou)
            fpc[k] += sum(v < t for v in prec)
    f1 = 2 * tp / (2 * tp + fn + fpc)
    return {"sIoU": sum(siou_all) / len(siou_all), "PPV": sum(prec_all) / len(prec_all), "mean_F1": f1.mean()}


# -- fixtures ----------------------------------------------------------------------------------


def random_frames(rng, n=12, h=40, w=56, kind="continuous", blob=(9, 12), lift=0.45):
    maps, labels = [], []
    for i in range(n):
        label = np.full((h, w), 255, np.uint8)
        top = int(rng.integers(5, 20))
        label[top:] = 0
        for _ in range(int(rng.integers(0 if i % 4 else 1, 5))):
            y, x = int(rng.integers(top, h - 3)), int(rng.integers(0, w - 3))
            label[y:y + int(rng.integers(blob[0] // 3 + 1, blob[0])), x:x + int(rng.integers(blob[1] // 3 + 1, blob[1]))] = 1
        s = rng.normal(0.3, 0.15, (h, w)) + lift * (label == 1) + 0.5 * (rng.random((h, w)) < 0.01)
        if kind == "ties":
            s = np.round(s * 16) / 16
        elif kind == "saturated":
            s = np.clip(s, 0, 1)  # many frames share their maximum: the order-dependent case
        maps.append(s.astype(np.float32))
        labels.append(label)
    return maps, labels


@pytest.mark.parametrize("kind", ["continuous", "ties", "saturated"])
def test_smiyc_pixel_metrics_equal_the_restated_official_algorithm(kind):
    rng = np.random.default_rng({"continuous": 0, "ties": 1, "saturated": 2}[kind])
    maps, labels = random_frames(rng, kind=kind)
    m = AnomalyMetrics("smiyc")
    m.update(np.stack(maps), np.stack(labels))
    got = m.compute()
    ref = ref_pix_binary_class([ref_frame(s.astype(np.float16), a) for s, a in zip(maps, labels)])
    for key in ("aupr", "auroc", "fpr95", "best_f1_threshold"):
        assert math.isclose(got[key], ref[key], rel_tol=1e-12, abs_tol=1e-15), (key, got[key], ref[key])
    assert got["arithmetic"].startswith("SegmentMeIfYouCan leaderboard")
    assert got["order_dependent"] == (kind == "saturated")


def test_smiyc_components_equal_the_restated_segeval():
    rng = np.random.default_rng(3)
    maps, labels = random_frames(rng, n=10, h=64, w=96, blob=(16, 24), lift=1.0)
    for track, (segsize, instsize) in (("obstacle", (50, 10)), ("anomaly", (500, 100))):
        m = AnomalyMetrics("smiyc", components=True, component_track=track)
        for i, (s, a) in enumerate(zip(maps, labels)):
            m.update(s, a, ids=[i])
        got = m.compute()
        ref = ref_segeval([s.astype(np.float16) for s in maps], labels, got["component_threshold"], segsize, instsize)
        if track == "obstacle":
            assert got["gt_components"] > 5 and got["pred_components"] > 5  # the comparison has components to compare
        for key in ("sIoU", "PPV", "mean_F1"):
            assert math.isclose(got[key], ref[key], rel_tol=1e-12), (track, key, got[key], ref[key])
    ref_thr = ref_pix_binary_class([ref_frame(s.astype(np.float16), a) for s, a in zip(maps, labels)])["best_f1_threshold"]
    assert got["component_threshold"] == ref_thr
    assert got["component_rule"].startswith("s > t")


def test_segeval_rounds_the_threshold_to_float16_as_numpy_1_23_does():
    # 0.5003 rounds to 0.50049 in float16: a float16 score of 0.50049 is then not above the threshold
    from anomseg.metrics.smiyc import segeval_prediction

    s = np.array([[0.5, 0.50049, 0.501]], np.float16)
    assert segeval_prediction(s, 0.5003).tolist() == [[False, False, True]]


def test_smiyc_streaming_and_shards_equal_one_batch():
    rng = np.random.default_rng(4)
    maps, labels = random_frames(rng, n=8)
    whole = AnomalyMetrics("smiyc")
    whole.update(np.stack(maps), np.stack(labels))
    a, b = AnomalyMetrics("smiyc"), AnomalyMetrics("smiyc")
    for i in (5, 1, 7, 3):  # any order: frames are combined in id order
        a.update(maps[i], labels[i], ids=[i])
    for i in (0, 2, 4, 6):
        b.update(maps[i], labels[i], ids=[i])
    a.merge(AnomalyMetrics.from_state(b.state_dict()))
    for key in ("aupr", "auroc", "fpr95", "best_f1_threshold"):
        assert a.compute()[key] == whole.compute()[key]


def test_smiyc_refuses_scores_beyond_float16_and_skips_frames_without_roi():
    m = AnomalyMetrics("smiyc")
    label = np.zeros((4, 4), np.uint8)
    label[0, 0] = 1
    with pytest.raises(MetricInputError, match="float16's range"):
        m.update(np.full((4, 4), 70000.0, np.float32), label)
    m.update(np.zeros((4, 4), np.float32), np.full((4, 4), 255, np.uint8), ids=[5])
    assert m.skipped == {5: "no evaluated pixel"}


def test_smiyc_and_exact_pooled_differ_and_agree_where_they_should():
    # with distinct scores and few pixels per frame every score is its own bin edge: smiyc's AP equals the
    # exact pooled AP; its AUROC is the trapezoid over the same points, which equals the exact AUROC
    rng = np.random.default_rng(5)
    maps = [rng.random((6, 8)).astype(np.float16).astype(np.float32) for _ in range(3)]
    labels = [(rng.random((6, 8)) < 0.3).astype(np.uint8) for _ in range(3)]
    smiyc, exact = AnomalyMetrics("smiyc"), AnomalyMetrics("pooled", exact=True)
    for m in (smiyc, exact):
        m.update(np.stack(maps), np.stack(labels))
    s, e = smiyc.compute(), exact.compute()
    assert math.isclose(s["auroc"], e["auroc"], rel_tol=1e-12)
    assert math.isclose(s["aupr"], e["aupr"], rel_tol=1e-12)
