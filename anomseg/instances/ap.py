"""Instance AP / AP50 exactly as the OoDIS scoring program computes them, streamed over images.

The OoDIS benchmark (Nekrasov et al., ICRA 2025) scores anomaly instances with the Cityscapes
instance-level evaluator as its scoring program configures it (kumuji/anomaly-benchmark-suite @ 110a360,
``scoring_program/evaluate.py`` and ``scoring_program/evaluation/evalInstanceLevelSemanticLabeling.py``;
../shared/docs/FORMATS.md, "OoDIS"). Every rule below is that code's:

* IoU thresholds ``np.arange(0.5, 1.0, 0.05)`` (10 values); a match needs IoU STRICTLY above the threshold;
  IoU = |P n G| / (|G| + |P| - |P n G|), the prediction's size counting its void pixels.
* Ground-truth instances with fewer than ``min_region_size`` (10) pixels, and anomaly pixels without an
  instance id (a Cityscapes "group", id < 1000), are never counted as objects to find.
* Pooled over all images, per threshold: each counted GT instance takes every prediction with IoU above
  the threshold; the highest confidence among them is its true positive, each other one a false positive
  with its own confidence (order does not matter: the evaluator keeps the max and appends the min). A GT
  with none is a "hard" false negative.
* A prediction with IoU above the threshold to no GT region at all (groups and small instances
  included) is a false positive unless (its void pixels + its pixels on groups + its pixels on small GT
  instances) / its size > the threshold (a small group's pixels count twice, as the evaluator adds both).
  A prediction matching a group or a small instance is neither.
* AP: scores sorted ascending; for each distinct score s: tp = true positives scoring >= s, fp = false
  positives >= s, fn = true positives below s + hard FN; points (r, p), plus (0, 1); AP = sum of p times
  widths from ``np.convolve(recall padded, [-0.5, 0, 0.5])``: the trapezoid-like rule of the evaluator
  (its comment says step-wise; it is not).
* No counted GT anywhere: AP NaN; GT but no prediction: 0. AP = nanmean over the instance labels x 10
  thresholds, AP50 = the value at 0.5; predictions are all relabelled "car" by the scoring program, so only
  the anomaly label can score, and each other Cityscapes instance label with GT adds a 0 to the mean.
* Where the official code raises (GT and predictions exist but every prediction is ignored and no GT is
  matched: an index error in its cumsum) this returns AP 0 for that threshold.

:class:`InstanceAP` keeps only a few numbers per instance (sizes, overlaps, confidences), never pixels:
memory grows with the number of instances, not with the images' size.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from anomseg.instances.extract import MIN_SIZE, InstanceError, Instances

#: the OoDIS IoU thresholds, the same float expression as the evaluator (0.6000000000000001 ...)
OVERLAPS = np.arange(0.5, 1.0, 0.05)
GROUP = -1  # an anomaly pixel without an instance id (Cityscapes group)
#: the evaluator's instance labels in its order (cityscapesScripts labels.py: hasInstances, not ignoreInEval):
#: person, rider, car, truck, bus, train, motorcycle, bicycle; anomalies are scored as car (26)
INSTANCE_LABELS = (24, 25, 26, 27, 28, 31, 32, 33)
ANOMALY_LABEL = 26


class InstanceAP:
    """Accumulates the matching information of every image; :meth:`compute` gives AP / AP50.

    Args:
        min_region_size: GT instances below this many pixels are not counted (OoDIS: 10).
    """

    def __init__(self, min_region_size: int = MIN_SIZE):
        self.min_region_size = int(min_region_size)
        self.images: list[dict] = []
        self.extra_labels: set[int] = set()

    def add(self, instances: Instances, gt, void=None, extra_labels=()) -> dict:
        """Match one image's predictions with its ground truth.

        Args:
            instances: the predicted :class:`Instances` (empty masks are skipped, as the evaluator does).
            gt: int (H, W) ground-truth ids: 0 no anomaly, k >= 1 anomaly instance k, -1 anomaly pixels
                without an instance id (a group).
            void: bool (H, W) void pixels (None: none).
            extra_labels: Cityscapes ids of other instance labels with GT in this image (only from
                Cityscapes-encoded OoDIS labels; see :func:`~anomseg.instances.oodis.target_from_cityscapes`).
        Returns:
            the image's record (plain numbers).
        """
        gt = np.asarray(gt)
        if gt.ndim != 2 or gt.dtype.kind not in "iu":
            raise InstanceError(f"instance ground truth: give int (H, W) ids, got {gt.dtype} {gt.shape}")
        if tuple(gt.shape) != instances.size:
            raise InstanceError(f"instance masks {instances.size} differ from the ground truth {gt.shape}")
        void = np.zeros(gt.shape, bool) if void is None else np.asarray(void, bool)
        values, index = np.unique(gt, return_inverse=True)  # index: each pixel's position in values
        index = index.reshape(-1)
        counts = np.bincount(index, minlength=len(values))
        ids = [int(v) for v in values if v != 0]
        rows = [k for k, v in enumerate(values) if v != 0]
        gt_sizes = counts[rows].astype(np.int64)
        sizes = instances.masks.reshape(len(instances), gt.size).sum(1).astype(np.int64)
        keep = np.flatnonzero(sizes > 0)
        overlap = np.zeros((len(ids), len(keep)), np.int64)
        if ids:
            for j, k in enumerate(keep):
                overlap[:, j] = np.bincount(index[instances.masks[k].reshape(-1)], minlength=len(values))[rows]
        rec = {"gt_size": gt_sizes, "gt_group": np.array([i == GROUP for i in ids], bool),
               "conf": instances.scores[keep].astype(np.float64), "size": sizes[keep],
               "void": np.array([int(np.count_nonzero(instances.masks[k] & void)) for k in keep], np.int64),
               "overlap": overlap}
        self.images.append(rec)
        self.extra_labels |= {int(x) for x in extra_labels}
        return rec

    # -- state -------------------------------------------------------------------------------
    def merge(self, other: "InstanceAP") -> None:
        if other.min_region_size != self.min_region_size:
            raise InstanceError(f"cannot merge instance APs of min_region_size {other.min_region_size} and "
                                f"{self.min_region_size}")
        self.images += other.images
        self.extra_labels |= other.extra_labels

    def state_dict(self) -> dict:
        return {"min_region_size": self.min_region_size, "images": self.images,
                "extra_labels": sorted(self.extra_labels)}

    @classmethod
    def from_state(cls, state: dict) -> "InstanceAP":
        out = cls(state["min_region_size"])
        out.images = [{k: np.asarray(v) for k, v in rec.items()} for rec in state["images"]]
        out.extra_labels = {int(x) for x in state["extra_labels"]}
        return out

    # -- the metric --------------------------------------------------------------------------
    def ap_at(self, t: float) -> float:
        """The anomaly label's AP at one IoU threshold (NaN without counted GT)."""
        y_true, y_score = [], []
        hard_fn, have_gt, have_pred = 0, False, False
        for rec in self.images:
            gs, group, conf = rec["gt_size"], rec["gt_group"], rec["conf"]
            size, void, ov = rec["size"], rec["void"], rec["overlap"]
            counted = (~group) & (gs >= self.min_region_size)
            have_gt |= bool(counted.any())
            have_pred |= len(conf) > 0
            iou = ov / np.maximum(gs[:, None] + size[None, :] - ov, 1)  # (G, P); 0 where there is no overlap
            above = (ov > 0) & (iou > t)
            for g in np.flatnonzero(counted):
                matched = conf[above[g]]
                if len(matched) == 0:
                    hard_fn += 1
                    continue
                best = int(np.argmax(matched))
                y_true.append(1.0)
                y_score.append(float(matched[best]))
                for c in np.delete(matched, best):
                    y_true.append(0.0)
                    y_score.append(float(c))
            for p in range(len(conf)):
                if above[:, p].any():
                    continue
                ignore = int(void[p])
                touching = ov[:, p] > 0
                ignore += int(ov[touching & group, p].sum())
                ignore += int(ov[touching & (gs < self.min_region_size), p].sum())
                if float(ignore) / float(size[p]) <= t:
                    y_true.append(0.0)
                    y_score.append(float(conf[p]))
        if not have_gt:
            return float("nan")
        if not have_pred or not y_score:
            return 0.0
        return _average_precision(np.array(y_true), np.array(y_score), hard_fn)

    def compute(self) -> dict:
        """{"AP", "AP50"} (fractions, NaN without GT), the AP at every threshold, the counts."""
        per_t = [self.ap_at(float(t)) for t in OVERLAPS]
        # the evaluator's (labels x thresholds) matrix, NaN where a label has no GT, averaged in its layout
        table = np.full((len(INSTANCE_LABELS), len(OVERLAPS)), np.nan)
        table[INSTANCE_LABELS.index(ANOMALY_LABEL)] = per_t
        for label in self.extra_labels:
            if label in INSTANCE_LABELS and label != ANOMALY_LABEL:
                table[INSTANCE_LABELS.index(label)] = 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # every label NaN: AP NaN (no GT anywhere)
            ap = float(np.nanmean(table))
            ap50 = float(np.nanmean(table[:, :1]))
        gt = sum(int(((~r["gt_group"]) & (r["gt_size"] >= self.min_region_size)).sum()) for r in self.images)
        return {"AP": ap, "AP50": ap50, "AP_per_threshold": {f"{t:.2f}": v for t, v in zip(OVERLAPS, per_t)},
                "gt_instances": gt, "pred_instances": int(sum(len(r["conf"]) for r in self.images)),
                "images": len(self.images), "other_labels_with_gt": sorted(self.extra_labels)}


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> float:
    """The evaluator's PR integration (see the module docstring)."""
    order = np.argsort(y_score, kind="stable")
    scores, truth = y_score[order], y_true[order]
    cum = np.cumsum(truth)
    _, first = np.unique(scores, return_index=True)
    n, n_true = len(scores), cum[-1]
    cum = np.append(cum, 0)  # index -1 reads this zero
    precision = np.zeros(len(first) + 1)
    recall = np.zeros(len(first) + 1)
    for j, i in enumerate(first):
        below = cum[i - 1]
        tp = n_true - below
        fp = n - i - tp
        fn = below + hard_fn
        precision[j] = float(tp) / (tp + fp)
        recall[j] = float(tp) / (tp + fn)
    precision[-1], recall[-1] = 1.0, 0.0
    padded = np.concatenate([[recall[0]], recall, [0.0]])
    widths = np.convolve(padded, [-0.5, 0, 0.5], "valid")
    out = float(np.dot(precision, widths))
    return out if math.isfinite(out) else 0.0
