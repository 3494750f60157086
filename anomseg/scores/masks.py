"""Anomaly scores of mask-classification networks (Mask2Former): the SegmentMeIfYouCan leaders' scores.

Inputs, per image of a batch (../shared/docs/FORMATS.md, "Mask-classification networks"): class logits
z float (N, Q, C) for Q queries over C = K + 1 classes (the last is "no object"; UNO's head has
C = K + 2, the class K being the negative class trained on outliers) and mask logits m float
(N, Q, h, w) at 1/4 resolution. p_q = softmax(z_q).

The semantic aggregate, in detectron2's order (``MaskFormer.semantic_inference``, what RbA, EAM, UNO
and Mask2Anomaly evaluate): the mask LOGITS are bilinearly upsampled (align_corners=False) to the output
size, then sigmoid, then S_c(x) = sum_q p_q(c) sigmoid(m_q(x)) for the K known classes. (transformers'
``post_process_semantic_segmentation`` resizes to 384x384 first: another number; not used.)

Scores (float32 (N, H, W), higher = more anomalous):

* :func:`rba` (Nayal et al., ICCV 2023; NazirNayal8/RbA ``evaluate_ood.py`` ``get_RbA``:
  ``-logits.tanh().sum(dim=0)`` of the aggregate): -sum_c tanh(S_c);
* :func:`eam` (Grcic et al.; matejgrcic/Open-set-M2F ``ood_detection_evaluation.py``):
  1 - sum_q sigmoid(m_q) max_{c<K} p_q(c);
* :func:`uno` (Delic et al.; Open-set-M2F ``ood_detection_evaluation_UNO.py``):
  sum_q sigmoid(m_q) (p_q(K) - max_{c<K} p_q(c)) on a head with K + 2 classes;
* :func:`max_aggregate` (Mask2Anomaly's score before its mask refinement and flip average, Rai et al.):
  1 - max_c S_c.

These are the functions; the methods that run them on a Mask2Former's queries come with the backbone.
"""

from __future__ import annotations

import torch

from anomseg.models.base import MaskQueries


def _known(q: MaskQueries, extra: int = 1) -> int:
    if q.class_logits.ndim != 3 or q.mask_logits.ndim != 4 or q.class_logits.shape[:2] != q.mask_logits.shape[:2]:
        raise ValueError(f"class logits (N, Q, C) {tuple(q.class_logits.shape)} and mask logits (N, Q, h, w) "
                         f"{tuple(q.mask_logits.shape)} must share N and Q")
    if q.class_logits.shape[-1] != q.known + extra:
        what = "known, negative, no object" if extra == 2 else "known + no object"
        raise ValueError(f"{q.class_logits.shape[-1]} class logits for K = {q.known} known classes: this score needs "
                         f"K + {extra} ({what})")
    return q.known


def mask_probabilities(q: MaskQueries, size: tuple[int, int]) -> torch.Tensor:
    """sigmoid of the mask logits brought to ``size`` (:meth:`MaskQueries.mask_logits_at`): float32 (N, Q, H, W)."""
    return torch.sigmoid(q.mask_logits_at(size))


def semantic_aggregate(q: MaskQueries, size: tuple[int, int]) -> torch.Tensor:
    """S_c = sum_q softmax(z_q)(c) sigmoid(m_q) over the K known classes: float32 (N, K, H, W)."""
    if q.class_logits.shape[-1] not in (q.known + 1, q.known + 2):
        _known(q)
    return q.semantic(size)


def rba(q: MaskQueries, size: tuple[int, int]) -> torch.Tensor:
    """Rejected by All: -sum_c tanh(S_c) over the known classes."""
    _known(q)
    return -torch.tanh(semantic_aggregate(q, size)).sum(1)


def eam(q: MaskQueries, size: tuple[int, int]) -> torch.Tensor:
    """Ensemble over anomaly masks: 1 - sum_q sigmoid(m_q) max_{c<K} p_q(c)."""
    k = _known(q)
    best = torch.softmax(q.class_logits.float(), -1)[..., :k].amax(-1)  # (N, Q)
    return 1 - torch.einsum("nq,nqhw->nhw", best, mask_probabilities(q, size))


def uno(q: MaskQueries, size: tuple[int, int]) -> torch.Tensor:
    """UNO on a K + 2-class head (class K = the negative class): sum_q sigmoid(m_q) (p_q(K) - max_{c<K} p_q(c))."""
    k = _known(q, extra=2)
    p = torch.softmax(q.class_logits.float(), -1)
    per_query = p[..., k] - p[..., :k].amax(-1)  # (N, Q)
    return torch.einsum("nq,nqhw->nhw", per_query, mask_probabilities(q, size))


def max_aggregate(q: MaskQueries, size: tuple[int, int]) -> torch.Tensor:
    """1 - max_c S_c (Mask2Anomaly's score before its refinement)."""
    _known(q)
    return 1 - semantic_aggregate(q, size).amax(1)


def mask2anomaly(q: MaskQueries, size: tuple[int, int], confidence: float = 0.95,
                 refine_classes: tuple[int, ...] = tuple(range(2, 11))) -> torch.Tensor:
    """Mask2Anomaly's score with its mask refinement, one pass (the flip average is the inference's).

    Following shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation:
    ``mask2former/maskformer_model.py`` ``semantic_inference`` appends, after the K class maps, one map
    s_q sigmoid(m_q) per query whose top softmax class (over all K + 1) is a known class in
    ``refine_classes`` (Cityscapes train ids 2..10, building .. sky) with s_q > ``confidence``;
    ``anomaly_utils/anomaly_inference.py`` takes 1 - the max over ALL those channels (its ``[0:19]``
    slices the batch axis, so the appended maps count too) and, when MORE THAN ONE map was appended,
    sets the score to 0 wherever the appended maps' max is >= 0.5.
    """
    k = _known(q)
    probs = torch.softmax(q.class_logits.float(), -1)
    top, label = probs.max(-1)  # (N, Q), over the K + 1 classes as the reference
    keep = (label != k) & (top > confidence) & torch.isin(label, torch.tensor(list(refine_classes), device=label.device))
    mp = mask_probabilities(q, size)
    semantic = torch.einsum("nqc,nqhw->nchw", probs[..., :k], mp)
    score = 1 - semantic.amax(1)
    out = []
    for i in range(score.shape[0]):
        s = score[i]
        if keep[i].any():
            extra = (top[i, keep[i]].view(-1, 1, 1) * mp[i, keep[i]])  # (M, H, W)
            best = extra.amax(0)
            s = 1 - torch.maximum(semantic[i].amax(0), best)
            if extra.shape[0] > 1:
                s = s * (best < 0.5)
        out.append(s)
    return torch.stack(out)
