"""Closed-set segmentation metrics: the confusion matrix and mean IoU (reported beside the anomaly
metrics by evaluation, and as the validation metric of segmentation training)."""

from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """int64 (K, K) on the inputs' device: rows = ground truth, columns = prediction, from int64 class
    maps ``pred`` and ``target`` (N, H, W); ignore (255) pixels left out."""
    keep = target != 255
    return torch.bincount(target[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def miou(conf: torch.Tensor) -> tuple[float, list[float]]:
    """Mean IoU over classes present in the ground truth or the prediction."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    return float(iou[present].mean()) if present.any() else float("nan"), iou.tolist()
