"""Anomaly instances from a score map: threshold, connected components, one confidence each.

An instance set of one image is :class:`Instances`: boolean masks (M, H, W) and float32 confidences (M,),
higher = more confident, sorted by confidence (highest first, ties by position). Void pixels never join an
instance: they are removed before the components are labelled, so a void line splits an object in two.

Confidence rules (``confidence=``): ``mean`` (the mean score inside the component; S2M and Objectomaly
both give a region the mean of the anomaly map over it: Objectomaly ``anomaly_utils/anomaly_inference.py``
``mask_mean_value``), ``max`` (its peak), or ``q<P>`` such as ``q0.9`` (numpy's default linear quantile of
the scores inside). The OoDIS scorer only ranks confidences (kumuji/anomaly-benchmark-suite
``evaluation/evalInstanceLevelSemanticLabeling.py``), so any monotone rule is allowed there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from anomseg.errors import AnomsegError

CONNECTIVITY = 8  # as the SMIYC component metrics (metrics/components.py)
MIN_SIZE = 10  # the OoDIS scorer's minimum region size (its minRegionSizes[0]); smaller components are dropped
_QUANTILE = re.compile(r"^q(0(\.\d+)?|1(\.0+)?)$")


class InstanceError(AnomsegError, ValueError):
    """Bad input to the instance tools (a score map, a rule, a threshold, a mask set)."""


@dataclass
class Instances:
    """The anomaly instances of one image.

    Attributes:
        masks: bool (M, H, W), one mask per instance.
        scores: float32 (M,), the confidences (higher = more confident).
    """

    masks: np.ndarray
    scores: np.ndarray

    def __post_init__(self):
        self.masks = np.asarray(self.masks, dtype=bool)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.masks.ndim != 3 or len(self.masks) != len(self.scores):
            raise InstanceError(f"instances need masks (M, H, W) and scores (M,); got {self.masks.shape} and "
                                f"{self.scores.shape}")
        if not np.isfinite(self.scores).all():
            raise InstanceError("instance confidences must be finite; a NaN or inf confidence cannot be ranked")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.masks.shape[1:])

    @classmethod
    def empty(cls, height: int, width: int) -> "Instances":
        return cls(np.zeros((0, height, width), bool), np.zeros(0, np.float32))

    def union(self) -> np.ndarray:
        """bool (H, W): the pixels of any instance."""
        return self.masks.any(0) if len(self) else np.zeros(self.size, bool)

    def boxes(self) -> np.ndarray:
        """int64 (M, 4): each mask's tight box [x0, y0, x1, y1], pixel edges (x1 = last column + 1)."""
        out = np.zeros((len(self), 4), np.int64)
        for k, m in enumerate(self.masks):
            ys, xs = np.nonzero(m)
            if len(ys):
                out[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return out


def check_confidence_rule(rule: str) -> str:
    """Return ``rule`` if it is ``mean``, ``max`` or ``q<P>`` with P in [0, 1], else a one-line InstanceError."""
    if rule in ("mean", "max") or (isinstance(rule, str) and _QUANTILE.match(rule)):
        return rule
    raise InstanceError(f"confidence={rule!r}: choose mean, max, or a quantile such as q0.9 (q0 .. q1)")


def confidence_of(values: np.ndarray, rule: str) -> float:
    """The confidence of one region from its scores (float (n,), n >= 1) under ``rule``."""
    v = np.asarray(values, np.float64)
    if rule == "mean":
        return float(v.mean())
    if rule == "max":
        return float(v.max())
    return float(np.quantile(v, float(rule[1:])))


def _check_map(score, void) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(score)
    if s.ndim != 2 or s.dtype.kind != "f":
        raise InstanceError(f"score map: give float (H, W), got {s.dtype} {s.shape}")
    if void is None:
        void = np.zeros(s.shape, bool)
    void = np.asarray(void, bool)
    if void.shape != s.shape:
        raise InstanceError(f"void mask {void.shape} differs from the score map {s.shape}")
    return s, void


def instances_from_scores(score, threshold: float, *, void=None, min_size: int = MIN_SIZE,
                          confidence: str = "mean") -> Instances:
    """Connected components of ``score >= threshold`` outside ``void`` as instances.

    Args:
        score: float (H, W), higher = more anomalous.
        threshold: the operating threshold (a pixel belongs to a component when ``score >= threshold``).
        void: bool (H, W) pixels that never join an instance (None: none).
        min_size: components with fewer pixels are dropped.
        confidence: ``mean`` | ``max`` | ``q<P>`` of the scores inside (see the module docstring).
    Returns:
        :class:`Instances`, 8-connected components, highest confidence first.
    """
    s, void = _check_map(score, void)
    rule = check_confidence_rule(confidence)
    if not isinstance(threshold, (int, float, np.floating)) or isinstance(threshold, bool) or not np.isfinite(threshold):
        raise InstanceError(f"threshold={threshold!r}: give a finite number (or calibrate one)")
    if not isinstance(min_size, (int, np.integer)) or isinstance(min_size, bool) or min_size < 1:
        raise InstanceError(f"min_size={min_size!r}: give a whole number of pixels >= 1")
    fg = (s >= threshold) & ~void & np.isfinite(s)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=CONNECTIVITY, ltype=cv2.CV_32S)
    keep = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= min_size]
    masks = np.zeros((len(keep), *s.shape), bool)
    scores = np.zeros(len(keep), np.float32)
    for j, k in enumerate(keep):
        masks[j] = lab == k
        scores[j] = confidence_of(s[masks[j]], rule)
    return sort_instances(Instances(masks, scores))


def sort_instances(inst: Instances) -> Instances:
    """Highest confidence first; equal confidences in their given order (a stable sort)."""
    order = np.argsort(-inst.scores.astype(np.float64), kind="stable")
    return Instances(inst.masks[order], inst.scores[order])
