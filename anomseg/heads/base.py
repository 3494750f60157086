"""What every head shares: scoring rows of features and whole feature maps."""

from __future__ import annotations

import abc

import torch
from torch import nn

from anomseg.models.base import resize_logits


class Head(nn.Module, abc.ABC):
    """A per-pixel anomaly head on D-dimensional features; higher score = more anomalous.

    Subclasses implement ``score_rows(x: float (n, D)) -> float (n,)``.
    """

    feat_dim: int

    @abc.abstractmethod
    def score_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Features float (n, D) -> anomaly scores float (n,)."""

    @torch.no_grad()
    def score_map(self, features: torch.Tensor, size: tuple[int, int] | None = None, chunk: int = 1 << 16) -> torch.Tensor:
        """Features float (N, D, h, w) -> scores float32 (N, h, w), bilinearly resized to ``size``."""
        if features.ndim != 4 or features.shape[1] != self.feat_dim:
            raise ValueError(f"features {tuple(features.shape)} must be (N, {self.feat_dim}, h, w) for this head")
        was = self.training
        self.eval()
        n, d, h, w = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(-1, d).float()
        out = torch.cat([self.score_rows(rows[i:i + chunk]) for i in range(0, len(rows), chunk)])
        self.train(was)
        scores = out.reshape(n, 1, h, w).float()
        if size is not None:
            scores = resize_logits(scores, size)
        return scores[:, 0]
