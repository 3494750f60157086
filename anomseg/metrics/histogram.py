"""Constant-memory pooled statistics with rigorous error bounds, for any score range.

Scores are binned by the leading bits of an order-preserving integer key of their float32
representation (sign, 8 exponent bits and ``mantissa_bits`` mantissa bits): every finite float
has a bin, the bins follow the score order, and no score range has to be known in advance. Within
a bin a score is resolved to a relative precision of 2**-mantissa_bits (11 bits: 4.9e-4).

Metrics are computed exactly for the binned scores (pixels of one bin tied). Because bins are
contiguous in score order, the exact metrics of the unbinned scores lie within bounds that follow
from the bin counts alone, and :meth:`ScoreHistogram.metrics` returns them:

* AUROC: only anomaly/inlier pairs inside one bin can change their credit (0.5 -> 0 or 1), so
  ``|exact - binned| <= sum_b pos_b * neg_b / (2 P N)``;
* FPR95: the exact first threshold with TPR >= 0.95 lies inside the bin where the binned TPR
  crosses 0.95, so ``binned - neg_b / N <= exact <= binned``;
* AUPR: per bin, the exact contribution lies between the ordering that puts all the bin's inliers
  above its anomalies (lower) and all anomalies tied above its inliers (upper); both have closed
  forms (the lower one through the digamma function).

State: a 4-slot int64 count per bin (inlier, anomaly, unused, void: the slot is ``anomaly & 3``, so
void pixels need no masking) = 2**(9 + mantissa_bits + 2) * 8 bytes (32 MiB for 11 bits), plus an
index buffer (2**21 pixels, 16 MiB by default) that batches the counting: 48 MiB in all. Maps on an
accelerator are counted there (the same keys, ``index_add_`` into a count tensor on that device: unlike
``bincount`` it does not wait for the device to find the largest key) and folded into the host counts when
the histogram is next read (``flush``: results, state files).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import digamma

from anomseg.metrics.curves import RECALL_LEVEL, group_metrics
from anomseg.metrics.device import count_into_, int32_keys

_SIGN = np.uint32(0x80000000)


def float_keys(scores: np.ndarray) -> np.ndarray:
    """uint32 keys whose unsigned order is the float32 order of ``scores`` (-0.0 mapped to +0.0)."""
    s = np.asarray(scores, np.float32) + np.float32(0.0)  # -0.0 + 0.0 = +0.0: one key for zero
    u = s.view(np.uint32)
    flip = (s.view(np.int32) >> 31).view(np.uint32)  # all ones for negative floats
    return u ^ (flip | _SIGN)


def keys_to_floats(keys) -> np.ndarray:
    """Inverse of :func:`float_keys`: uint32 keys -> their float32 values, as float64."""
    keys = np.asarray(keys, np.uint32)
    u = np.where(keys & _SIGN, keys ^ _SIGN, ~keys)
    with np.errstate(invalid="ignore"):  # keys above +inf's are NaN bit patterns
        return u.astype(np.uint32).view(np.float32).astype(np.float64)


def key_to_float(key: int) -> float:
    """Inverse of :func:`float_keys` for one key."""
    return float(keys_to_floats([key])[0])


class ScoreHistogram:
    """Streaming, mergeable (score, anomaly) histogram in constant memory.

    Args:
        mantissa_bits: mantissa bits kept per bin (resolution 2**-mantissa_bits, relative).
        buffer_size: pixels batched before counting (memory: 8 bytes each; intp, so that
            ``np.bincount`` counts without converting).
    """

    def __init__(self, mantissa_bits: int = 11, buffer_size: int = 1 << 21):
        if not 0 <= mantissa_bits <= 14:
            raise ValueError(f"mantissa_bits={mantissa_bits} must lie in 0..14 (memory grows 2x per bit)")
        self.mantissa_bits = mantissa_bits
        self.bits = 9 + mantissa_bits
        self.counts = np.zeros(4 << self.bits, np.int64)
        self._buf = np.empty(buffer_size, np.intp)
        self._fill = 0
        self._device_counts: dict[torch.device, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes + self._buf.nbytes

    def update(self, scores, anomaly) -> None:
        """Add pixels: ``scores`` finite floats, ``anomaly`` 0/1/255 (uint8 or another integer dtype) of the same
        size (numpy, or torch on any device: maps on an accelerator are counted there)."""
        if isinstance(scores, torch.Tensor):
            if scores.device.type != "cpu":
                self._update_device(scores, anomaly)
                return
            scores = scores.float().numpy()
        if isinstance(anomaly, torch.Tensor):
            anomaly = anomaly.cpu().numpy()
        keys = float_keys(scores.ravel())
        keys >>= np.uint32(32 - self.bits)
        keys <<= np.uint32(2)
        keys |= (np.asarray(anomaly).ravel() & 3).astype(np.uint32)  # any integer dtype of 0 / 1 / 255
        n = len(keys)
        if n > len(self._buf):
            self._count(keys)
            return
        if self._fill + n > len(self._buf):
            self.flush()
        self._buf[self._fill: self._fill + n] = keys
        self._fill += n

    def _update_device(self, scores: torch.Tensor, anomaly) -> None:
        a = torch.as_tensor(anomaly, device=scores.device).reshape(-1)
        keys = (int32_keys(scores.reshape(-1)).long() + 2**31) >> (32 - self.bits)  # this module's uint32 keys
        idx = (keys << 2) | (a & 3).long()
        counts = self._device_counts.get(scores.device)
        if counts is None:
            counts = self._device_counts[scores.device] = torch.zeros(len(self.counts), dtype=torch.int64,
                                                                      device=scores.device)
        count_into_(counts, idx)

    def _count(self, idx: np.ndarray) -> None:
        if len(idx):
            c = np.bincount(idx, minlength=len(self.counts))
            self.counts += c

    def flush(self) -> None:
        """Count the buffered pixels into the histogram (and bring the device counts to the host)."""
        self._count(self._buf[: self._fill])
        self._fill = 0
        for counts in self._device_counts.values():
            self.counts += counts.cpu().numpy()
            counts.zero_()

    def merge(self, other: "ScoreHistogram") -> None:
        if other.mantissa_bits != self.mantissa_bits:
            raise ValueError(f"cannot merge histograms of {self.mantissa_bits} and {other.mantissa_bits} mantissa bits")
        self.flush()
        other.flush()
        self.counts += other.counts

    def reset(self) -> None:
        self.counts[:] = 0
        self._fill = 0
        for counts in self._device_counts.values():
            counts.zero_()

    def state_dict(self) -> dict:
        """Compact state: the non-empty entries only."""
        self.flush()
        nz = np.flatnonzero(self.counts)
        return {"mantissa_bits": self.mantissa_bits, "index": nz, "count": self.counts[nz]}

    def load_state_dict(self, state: dict) -> None:
        if state["mantissa_bits"] != self.mantissa_bits:
            raise ValueError(f"state has {state['mantissa_bits']} mantissa bits, this histogram {self.mantissa_bits}")
        self.reset()
        self.counts[state["index"]] = state["count"]

    def groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin ids, anomaly counts, inlier counts) of the non-empty bins, ascending; void left out."""
        self.flush()
        c = self.counts.reshape(-1, 4)
        inl, anom = c[:, 0], c[:, 1]
        used = np.flatnonzero(inl + anom)
        return used, anom[used], inl[used]

    @property
    def void(self) -> int:
        self.flush()
        return int(self.counts[3::4].sum())

    def bin_lower_edge(self, b: int) -> float:
        """Smallest float32 score of bin ``b``: ``score >= edge`` selects exactly bins >= b."""
        return key_to_float(int(b) << (32 - self.bits))

    def bin_lower_edges(self, bins) -> np.ndarray:
        """:meth:`bin_lower_edge` of every bin of an array (float64), in one vectorised step."""
        return keys_to_floats(np.asarray(bins, np.uint64) << np.uint64(32 - self.bits))

    def metrics(self, recall_level: float = RECALL_LEVEL) -> dict:
        """Pooled metrics of the binned scores and bounds on the exact ones (module docstring).

        Returns ``auroc, aupr, fpr95`` (binned, ties within bins) and ``auroc_bound``,
        ``aupr_low``, ``aupr_high``, ``fpr95_low`` such that the exact pooled values satisfy
        ``|auroc_exact - auroc| <= auroc_bound``, ``aupr_low <= aupr_exact <= aupr_high`` and
        ``fpr95_low <= fpr95_exact <= fpr95``.
        """
        _, pos, neg = self.groups()
        out = group_metrics(pos, neg, recall_level)
        P, N = out["pos"], out["neg"]
        out["auroc_bound"] = float(np.dot(pos.astype(np.float64), neg) / (2.0 * P * N))
        tp = np.cumsum(pos[::-1])[::-1]
        fp = np.cumsum(neg[::-1])[::-1]
        g = np.flatnonzero(pos)
        p, n = pos[g].astype(np.float64), neg[g].astype(np.float64)
        above_tp, above_fp = (tp[g] - pos[g]).astype(np.float64), (fp[g] - neg[g]).astype(np.float64)
        high = p * (above_tp + p) / (above_tp + p + above_fp)
        c = above_fp + n
        low = p - c * (digamma(above_tp + c + p + 1) - digamma(above_tp + c + 1))
        out["aupr_low"] = float(min(np.sum(low) / P, out["aupr"]))
        out["aupr_high"] = float(max(np.sum(high) / P, out["aupr"]))
        cross = g[np.flatnonzero(tp[g] / P >= recall_level)[-1]]
        out["fpr95_low"] = float((fp[cross] - neg[cross]) / N)
        return out

    def best_f1_threshold(self) -> tuple[float, float]:
        """(threshold, F1) maximising the pixel F1 of ``score >= threshold`` over bin edges."""
        bins, pos, neg = self.groups()
        P = int(pos.sum())
        if P == 0:
            raise ValueError("best-F1 threshold needs at least one anomaly pixel; use a labelled split with anomalies (or threshold: tpr95 / a number)")
        tp = np.cumsum(pos[::-1])[::-1]
        fp = np.cumsum(neg[::-1])[::-1]
        f1 = 2 * tp / (tp + fp + P)
        k = int(np.argmax(f1))
        return self.bin_lower_edge(bins[k]), float(f1[k])
