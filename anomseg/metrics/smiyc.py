"""SegmentMeIfYouCan's leaderboard arithmetic: PixBinaryClass (pixel curves) and SegEval (components).

The official numbers are not the exact pooled metrics: road-anomaly-benchmark (github.com/
SegmentMeIfYouCan/road-anomaly-benchmark at 1c7804e, ``road_anomaly_benchmark/metrics/
pixel_classification.py``, ``pixel_classification_curves.py``, ``instance_segmentation.py``;
../shared/docs/SMIYC.md sections 3 and 4) reads the scores back from float16 files, bins each frame
at its own percentiles and combines the frames' bins. Restated here:

1. per frame, on the ROI (label < 255): bin edges = ``vmin - eps``, ``vmax + eps`` (eps =
   max(1 % of the float16 range, 0.01)) and ``quantile(s, linspace(0, 1, min(384, n)))`` of the anomaly
   and of the inlier scores, sorted and de-duplicated; each bin ``[E_k, E_k+1)`` (the last closed)
   contributes its lower edge as a threshold with its anomaly / inlier counts;
2. all frames' (threshold, tp, fp), each frame's from its highest bin down, are concatenated in frame
   order, ordered by ``argsort(t)[::-1]`` (numpy's default sort, reversed) and cumulated in float64;
3. repeated thresholds collapse to their last occurrence (index 0 and the last index kept as they are),
   a (0, 0) point is prepended (threshold max + 1);
4. AP = sum of (recall_k - recall_k-1) * precision_k (precision 1 where nothing is predicted),
   AUROC = trapezoid rule over (FPR, TPR), FPR95 = FPR at the first point with TPR >= 0.95 (1.0 if none),
   best F1 = the first maximum of 2TP / (2TP + FP + FN), with its threshold.

Order dependence (SMIYC.md 3.7): when several frames share the highest threshold, index 0 is a partial
sum that depends on the tie order of numpy's unstable sort, that is on the concatenated array and on the
numpy version (its sort algorithm changed after 1.23). The reference's parallel mode concatenates in
arbitrary order, its ``--no-parallel`` mode in frame order. anomseg builds the same array in frame order
(the dataset's, sorted by frame id), so under the reference's numpy (1.23.3) it gives the reference's
digits; under another numpy the tied case may differ (measured by ``tools/bench/compare_smiyc_official.py``),
and ``pix_binary_class`` flags it (``order_dependent``).

SegEval thresholds the float16 scores at the best-F1 threshold with a strict ``>``. The reference runs with
numpy 1.23.3 (its requirements.txt), whose value-based casting compares a float16 map with a float64
scalar in float16: the threshold is rounded to float16 first. That is what :func:`segeval_prediction`
does (numpy >= 2 would compare in float64; checked on both numpy versions).
"""

from __future__ import annotations

import numpy as np

NUM_BINS = 768  # PixBinaryClass: num_bins, of which num_bins // 2 percentiles per class
MAX_FLOAT16 = float(np.finfo(np.float16).max)  # 65504


def to_float16(score: np.ndarray) -> np.ndarray:
    """The scores as a score file holds them (float16); values beyond float16's range are an error."""
    with np.errstate(over="ignore"):
        s16 = np.asarray(score).astype(np.float16)
    if not np.isfinite(s16).all():
        bad = np.asarray(score)[~np.isfinite(s16)].ravel()[0]
        raise ValueError(f"score {bad} is outside float16's range (|s| <= {MAX_FLOAT16:g}) or not finite; the SMIYC "
                         f"files are float16: rescale the score (a monotone map keeps its ranking) before exporting")
    return s16


def frame_bins(score16: np.ndarray, anomaly: np.ndarray) -> dict:
    """One frame's PixBinaryClass bins (step 1 of the module docstring).

    Args:
        score16: float16 (H, W) score map (higher = more anomalous).
        anomaly: uint8 (H, W), 0 inlier / 1 anomaly / 255 void.
    Returns:
        ``{"thr": float64 (n,), "tp": int64 (n,), "fp": int64 (n,), "pos": int, "neg": int}``: the lower edge of
        each bin with its anomaly / inlier pixel counts, from the highest bin down (the reference's layout,
        which the tie order of step 2 depends on); ``None`` if the frame has no ROI pixel.
    """
    roi = anomaly != 255
    p = score16[roi]
    if p.size == 0:
        return None
    y = anomaly[roi] == 1
    pos, neg = p[y], p[~y]
    vmin, vmax = p.min(), p.max()
    # numpy 1.23's promotion (the reference's pin): the range in float16, eps and the outer edges in float64
    eps = max(float(np.float16(vmax - vmin)) * 1e-2, 1e-2)
    parts = [np.array([float(vmin) - eps, float(vmax) + eps])]
    for values in (pos, neg):
        if values.size:
            parts.append(np.quantile(values, np.linspace(0, 1, min(NUM_BINS // 2, values.size))))
    edges = np.unique(np.concatenate(parts))
    tp, _ = np.histogram(pos, bins=edges)
    fp, _ = np.histogram(neg, bins=edges)
    # high to low, as the reference lays out each frame's bins: the sort of step 2 sees the same array
    return {"thr": edges[-2::-1].astype(np.float64), "tp": tp[::-1].astype(np.int64), "fp": fp[::-1].astype(np.int64),
            "pos": int(pos.size), "neg": int(neg.size)}


def pix_binary_class(frames: list[dict]) -> dict:
    """PixBinaryClass over frames (steps 2-4 of the module docstring), frames in the given order.

    Returns:
        ``{"auroc", "aupr", "fpr95", "best_f1", "best_f1_threshold", "tpr95_threshold", "pos", "neg",
        "points", "order_dependent"}`` (floats; ``points`` = the curve's length after the collapse;
        ``order_dependent``: several frames share the top threshold, so the official value depends on the
        tie order of numpy's sort, which differs between numpy versions).
    """
    frames = [f for f in frames if f is not None]
    P = sum(f["pos"] for f in frames)
    N = sum(f["neg"] for f in frames)
    if P == 0 or N == 0:
        raise ValueError("SMIYC metrics need at least one anomaly and one inlier pixel in total; evaluate a split whose labels hold both (anomaly pixels and inliers outside void)")
    thr = np.concatenate([f["thr"] for f in frames])
    # frames sharing the top threshold make index 0 a partial sum in numpy's (unstable) tie order
    order_dependent = sum(bool(len(f["thr"])) and f["thr"][0] == thr.max() for f in frames) > 1
    order = np.argsort(thr)[::-1]
    thr = thr[order]
    TP = np.cumsum(np.concatenate([f["tp"] for f in frames])[order].astype(np.float64))
    FP = np.cumsum(np.concatenate([f["fp"] for f in frames])[order].astype(np.float64))
    keep = np.concatenate([[0], np.flatnonzero(thr[:-1] != thr[1:]), [len(thr) - 1]])
    thr, TP, FP = thr[keep], TP[keep], FP[keep]
    if TP[0] != 0 or FP[0] != 0:
        thr = np.concatenate([[float(thr.max()) + 1], thr])
        TP, FP = np.concatenate([[0.0], TP]), np.concatenate([[0.0], FP])
    if TP[-1] != P or FP[-1] != N:
        thr = np.concatenate([thr, [float(thr.max()) - 1]])
        TP, FP = np.concatenate([TP, [float(P)]]), np.concatenate([FP, [float(N)]])
    FN, TN = P - TP, N - FP
    tpr = TP / (TP + FN)
    fpr = FP / (FP + TN)
    predicted = TP + FP
    precision = np.ones(len(TP))
    precision[predicted > 0] = TP[predicted > 0] / predicted[predicted > 0]
    aupr = float(np.sum(np.diff(tpr) * precision[1:]))
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))  # the trapezoid rule, as np.trapz
    i = int(np.searchsorted(tpr, 0.95))
    fpr95, tpr95_thr = (float(fpr[i]), float(thr[i])) if i < len(tpr) else (1.0, 0.0)
    f1 = 2 * TP / (2 * TP + FP + FN)
    ix = int(np.nanargmax(f1))
    return {"auroc": auroc, "aupr": aupr, "fpr95": fpr95, "best_f1": float(f1[ix]),
            "best_f1_threshold": float(thr[ix]), "tpr95_threshold": tpr95_thr, "pos": int(P), "neg": int(N),
            "points": int(len(thr)), "order_dependent": bool(order_dependent)}


def segeval_prediction(score16: np.ndarray, threshold: float) -> np.ndarray:
    """bool (H, W): SegEval's binarisation ``s > threshold``, compared in float16 (see the module docstring)."""
    return np.asarray(score16, np.float16) > np.float16(threshold)
