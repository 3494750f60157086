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
import torch.nn.functional as F


def _check(class_logits: torch.Tensor, mask_logits: torch.Tensor, known: int) -> None:
    if class_logits.ndim != 3 or mask_logits.ndim != 4 or class_logits.shape[:2] != mask_logits.shape[:2]:
        raise ValueError(f"class logits (N, Q, C) {tuple(class_logits.shape)} and mask logits (N, Q, h, w) "
                         f"{tuple(mask_logits.shape)} must share N and Q")
    if not 1 <= known < class_logits.shape[-1]:
        raise ValueError(f"known={known}: the {class_logits.shape[-1]} class logits hold K known classes + no object")


def mask_probabilities(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """sigmoid of the mask logits upsampled bilinearly (align_corners=False) to ``size``: float (N, Q, H, W)."""
    return torch.sigmoid(F.interpolate(mask_logits.float(), size=tuple(size), mode="bilinear", align_corners=False))


def semantic_aggregate(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int],
                       known: int | None = None) -> torch.Tensor:
    """S_c = sum_q softmax(z_q)(c) sigmoid(m_q) for the ``known`` classes (default C - 1): float (N, K, H, W)."""
    known = class_logits.shape[-1] - 1 if known is None else known
    _check(class_logits, mask_logits, known)
    p = torch.softmax(class_logits.float(), -1)[..., :known]
    return torch.einsum("nqc,nqhw->nchw", p, mask_probabilities(mask_logits, size))


def rba(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int], known: int | None = None) -> torch.Tensor:
    """Rejected by All: -sum_c tanh(S_c) over the known classes."""
    return -torch.tanh(semantic_aggregate(class_logits, mask_logits, size, known)).sum(1)


def eam(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int], known: int | None = None) -> torch.Tensor:
    """Ensemble over anomaly masks: 1 - sum_q sigmoid(m_q) max_{c<K} p_q(c)."""
    known = class_logits.shape[-1] - 1 if known is None else known
    _check(class_logits, mask_logits, known)
    best = torch.softmax(class_logits.float(), -1)[..., :known].amax(-1)  # (N, Q)
    return 1 - torch.einsum("nq,nqhw->nhw", best, mask_probabilities(mask_logits, size))


def uno(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int], known: int | None = None) -> torch.Tensor:
    """UNO on a K + 2-class head (class K = the negative class): sum_q sigmoid(m_q) (p_q(K) - max_{c<K} p_q(c))."""
    known = class_logits.shape[-1] - 2 if known is None else known
    _check(class_logits, mask_logits, known)
    if class_logits.shape[-1] != known + 2:
        raise ValueError(f"uno needs K + 2 = {known + 2} class logits (known, negative, no object); got "
                         f"{class_logits.shape[-1]}")
    p = torch.softmax(class_logits.float(), -1)
    per_query = p[..., known] - p[..., :known].amax(-1)  # (N, Q)
    return torch.einsum("nq,nqhw->nhw", per_query, mask_probabilities(mask_logits, size))


def max_aggregate(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int],
                  known: int | None = None) -> torch.Tensor:
    """1 - max_c S_c (Mask2Anomaly's score before its refinement)."""
    return 1 - semantic_aggregate(class_logits, mask_logits, size, known).amax(1)
