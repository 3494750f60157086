"""Threshold metrics from grouped counts: the one computation every protocol shares.

Pixels are summarised as ascending *groups* of scores: group g holds ``pos[g]`` anomaly and
``neg[g]`` inlier pixels, every pixel of a group is treated as tied, and every pixel of group g
scores lower than every pixel of group g + 1. Exact per-image metrics use one group per distinct
score; the pooled protocol uses histogram bins. With that, for a threshold at group g
("score >= value of g"): TP(g) = sum(pos[g:]), FP(g) = sum(neg[g:]).

Definitions (ties as in scikit-learn):

* AUROC: P(s_pos > s_neg) + 0.5 P(s_pos = s_neg), which equals ``roc_auc_score``;
* AUPR: average precision, sum over thresholds of (R_g - R_{g+1}) * precision_g, as
  ``average_precision_score``;
* FPR95 "first": FPR at the first threshold, from the top, whose TPR >= 0.95 (SMIYC and our
  per-image protocol);
* FPR95 "nearest": the CAOS reference (hendrycks/anomaly-seg, ``anom_utils.fpr_and_fdr_at_recall``):
  the PR-curve points are taken from the lowest threshold that reaches full recall up to the highest
  threshold, the point whose recall is nearest 0.95 wins (first on ties, so among thresholds with
  equal recall the lowest one, the one with the most false positives), and its FP / N is returned.
"""

from __future__ import annotations

import numpy as np

RECALL_LEVEL = 0.95


def group_metrics(pos: np.ndarray, neg: np.ndarray, recall_level: float = RECALL_LEVEL) -> dict:
    """AUROC, AUPR and both FPR95 conventions from ascending group counts.

    Args:
        pos, neg: int64 (G,) anomaly / inlier pixel counts per ascending score group.
    Returns:
        ``{"auroc", "aupr", "fpr95", "fpr95_nearest", "pos", "neg", "ap_terms"}`` (floats; ints for counts;
        ``ap_terms`` float64 (m,): the AP terms of the m groups holding anomaly pixels, ascending, aupr their sum).
        Requires at least one anomaly and one inlier pixel.
    """
    pos = np.asarray(pos, np.int64)
    neg = np.asarray(neg, np.int64)
    P, N = int(pos.sum()), int(neg.sum())
    if P == 0 or N == 0:
        raise ValueError("group_metrics needs at least one anomaly and one inlier pixel; evaluate a split whose labels hold both (anomaly pixels and inliers outside void)")
    tp = np.cumsum(pos[::-1])[::-1]  # pixels at or above each group
    fp = np.cumsum(neg[::-1])[::-1]
    neg_below = N - fp
    # AUROC as the Mann-Whitney statistic with half credit for ties, in exact integers when they fit.
    if P * N < 2**61:
        u2 = int(np.dot(pos, 2 * neg_below + neg))
        auroc = u2 / (2 * P * N)
    else:
        auroc = float(np.dot(pos.astype(np.float64), 2.0 * neg_below + neg)) / (2.0 * P * N)
    g = np.flatnonzero(pos)  # groups where recall changes, ascending
    tp_g, fp_g = tp[g], fp[g]
    terms = pos[g] / P * (tp_g / (tp_g + fp_g))  # one AP term per distinct anomaly score, ascending
    aupr = float(np.sum(terms))
    recall = tp_g / P  # float64, as recall = tps / tps[-1] in the references
    reach = np.flatnonzero(recall >= recall_level)
    fpr_first = fp_g[reach[-1]] / N  # highest threshold whose TPR reaches the level
    # CAOS: lowest threshold of each recall level = just above the next lower anomaly group.
    fp_low = np.empty(len(g), np.int64)
    fp_low[0] = fp_g[0]
    fp_low[1:] = fp_g[:-1] - neg[g[:-1]]
    k = int(np.argmin(np.abs(recall - recall_level)))
    return {"auroc": float(auroc), "aupr": aupr, "fpr95": float(fpr_first),
            "fpr95_nearest": float(fp_low[k] / N), "pos": P, "neg": N, "ap_terms": terms}


def exact_groups(pos_scores: np.ndarray, neg_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ascending groups from raw scores: one group per distinct anomaly score.

    Inlier pixels strictly between two distinct anomaly scores form an inlier-only group, so the
    result has 2m + 1 groups for m distinct anomaly scores. Cost: one sort of the inlier scores
    (O(N log N), vectorised) and a sort of the (few) anomaly scores.
    """
    u, cp = np.unique(pos_scores, return_counts=True)
    s = np.sort(neg_scores, kind="stable" if neg_scores.dtype == np.float16 else None)
    lt = np.searchsorted(s, u, side="left")
    le = np.searchsorted(s, u, side="right")
    m = len(u)
    pos = np.zeros(2 * m + 1, np.int64)
    neg = np.zeros(2 * m + 1, np.int64)
    pos[1::2] = cp
    neg[1::2] = le - lt
    neg[0] = lt[0]
    neg[2:-1:2] = lt[1:] - le[:-1]
    neg[-1] = len(s) - le[-1]
    return pos, neg


def exact_metrics(pos_scores: np.ndarray, neg_scores: np.ndarray) -> dict:
    """Exact metrics (see :func:`group_metrics`) of two 1-D score arrays; NaN or infinite scores are an error
    (NaN would sort above every score and bias every number)."""
    pos, neg = np.asarray(pos_scores).ravel(), np.asarray(neg_scores).ravel()
    for what, s in (("anomaly", pos), ("inlier", neg)):
        if s.dtype.kind == "f" and not np.isfinite(s).all():
            raise ValueError(f"{int((~np.isfinite(s)).sum())} of {s.size} {what} scores are NaN or infinite; "
                             f"fix the score before computing metrics")
    return group_metrics(*exact_groups(pos, neg))
