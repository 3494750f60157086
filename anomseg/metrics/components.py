"""SegmentMeIfYouCan component-level metrics: sIoU, PPV and mean F1.

Definitions (../shared/docs/FORMATS.md; Chan et al., "SegmentMeIfYouCan", NeurIPS 2021 Datasets):

* prediction = ``score >= threshold`` on non-void pixels (protocol ``smiyc``: SegEval's strict ``>``, in
  float16); predicted components are 8-connected;
  components smaller than ``min_pred_size`` pixels are dropped (500 anomaly track, 50 obstacle);
* THEN ground-truth components (8-connected anomaly regions) smaller than ``min_gt_size`` (100 / 10)
  become void, and both maps are restricted to the remaining region (the reference's order);
* sIoU(k) = |k n P| / (|P| + |k| - |k n P| - A), P = the predicted components touching GT
  component k, A = the pixels of P lying on other GT components;
* PPV(c) = |c n GT anomaly| / |c| for a predicted component c;
* for t in linspace(0.25, 0.75, 11): TP = GT components with sIoU >= t, FN = the others,
  FP = predicted components with PPV < t, summed over the dataset; F1_t = 2TP / (2TP + FN + FP);
  mean F1 = the mean of F1_t over t.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from anomseg.metrics.smiyc import segeval_prediction

THRESHOLDS = np.linspace(0.25, 0.75, 11)
TRACKS = {"anomaly": {"min_pred_size": 500, "min_gt_size": 100}, "obstacle": {"min_pred_size": 50, "min_gt_size": 10}}


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count incl. background, int32 label map, sizes) of the 8-connected components of ``mask``."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return n, labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64)


def image_components(score: np.ndarray, anomaly: np.ndarray, threshold: float,
                     min_pred_size: int, min_gt_size: int, smiyc: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """sIoU of each GT component and PPV of each predicted component of one image.

    Order as the reference (SegmentMeIfYouCan/road-anomaly-benchmark ``metrics/instance_segmentation.py``,
    ``default_instancer``): the prediction (outside void) is labelled and its components under
    ``min_pred_size`` dropped FIRST, on the full map; only then do GT components under ``min_gt_size``
    become void, and both label maps are restricted to the remaining region (a predicted component
    keeps only its pixels there, and one with none left is not counted).

    Args:
        score: float (H, W); anomaly: uint8 (H, W), 0 / 1 / 255.
        smiyc: predict ``score > threshold`` compared in float16, as SegEval does (see
            :mod:`anomseg.metrics.smiyc`), instead of ``score >= threshold``.
    Returns:
        (sIoU float64 (n_gt,), PPV float64 (n_pred,)).
    """
    void = anomaly == 255
    predicted = segeval_prediction(score, threshold) if smiyc else score >= threshold
    n_pr, pr_lab, pr_size = _components(predicted & ~void)
    small_pr = np.flatnonzero(pr_size[1:] < min_pred_size) + 1
    if len(small_pr):
        pr_lab[np.isin(pr_lab, small_pr)] = 0
    n_gt, gt_lab, gt_size = _components(anomaly == 1)
    small_gt = np.flatnonzero(gt_size[1:] < min_gt_size) + 1
    if len(small_gt):
        void = void | np.isin(gt_lab, small_gt)
    gt_lab[void] = 0
    pr_lab[void] = 0
    keep_gt = np.flatnonzero(gt_size[1:] >= min_gt_size) + 1
    p_size_all = np.bincount(pr_lab.ravel(), minlength=n_pr)  # sizes inside the evaluated region
    keep_pr = np.flatnonzero(p_size_all[1:] > 0) + 1
    # overlap[k, c] = pixels of GT component k inside predicted component c
    both = (gt_lab > 0) & (pr_lab > 0)
    overlap = np.bincount(gt_lab[both].astype(np.int64) * n_pr + pr_lab[both], minlength=n_gt * n_pr).reshape(n_gt, n_pr)
    overlap = overlap[np.ix_(keep_gt, keep_pr)]
    p_size = p_size_all[keep_pr]
    siou = np.empty(len(keep_gt))
    on_gt = overlap.sum(0)  # pixels of each predicted component on any GT component
    for i, k in enumerate(keep_gt):
        touching = overlap[i] > 0
        inter = overlap[i].sum()
        P = p_size[touching].sum()
        A = (on_gt[touching] - overlap[i, touching]).sum()
        siou[i] = inter / (P + gt_size[k] - inter - A)
    ppv = on_gt / np.maximum(p_size, 1)
    return siou, ppv.astype(np.float64)


class ComponentStats:
    """Accumulates per-component sIoU / PPV over images; mergeable."""

    def __init__(self):
        self.siou: list[np.ndarray] = []
        self.ppv: list[np.ndarray] = []

    def add(self, siou: np.ndarray, ppv: np.ndarray) -> None:
        self.siou.append(np.asarray(siou, np.float64))
        self.ppv.append(np.asarray(ppv, np.float64))

    def merge(self, other: "ComponentStats") -> None:
        self.siou += other.siou
        self.ppv += other.ppv

    def compute(self) -> dict:
        siou = np.concatenate(self.siou) if self.siou else np.zeros(0)
        ppv = np.concatenate(self.ppv) if self.ppv else np.zeros(0)
        f1 = []
        for t in THRESHOLDS:
            tp = int((siou >= t).sum())
            fn = len(siou) - tp
            fp = int((ppv < t).sum())
            f1.append(2 * tp / (2 * tp + fn + fp) if (2 * tp + fn + fp) else float("nan"))
        return {
            "sIoU": math.fsum(siou) / len(siou) if len(siou) else float("nan"),
            "PPV": math.fsum(ppv) / len(ppv) if len(ppv) else float("nan"),
            "mean_F1": float(np.mean(f1)),
            "gt_components": int(len(siou)),
            "pred_components": int(len(ppv)),
        }
