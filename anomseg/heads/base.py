"""What every head shares: scoring rows of features and whole feature maps, in bounded memory.

A head scores rows in chunks whose size follows from a memory budget (``memory_budget`` bytes of
intermediates; :meth:`Head.row_bytes` says what one row costs), so scoring a million rows or a
full-resolution feature map never builds a tensor larger than the budget. Scoring runs on the
device of the head's parameters / buffers; inputs are moved there chunk by chunk.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from anomseg.models.base import resize_logits

DEFAULT_MEMORY_BUDGET = 256 << 20  # bytes of intermediates per chunk


class Head(nn.Module, abc.ABC):
    """A per-pixel anomaly head on D-dimensional features; higher score = more anomalous.

    Subclasses implement ``_score_chunk(x: float32 (n, D) on the head's device) -> float32 (n,)`` and
    may override :meth:`row_bytes` (bytes of intermediates one row needs).
    """

    feat_dim: int
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    @property
    def device(self) -> torch.device:
        for t in self.buffers():
            return t.device
        return next(self.parameters()).device

    def row_bytes(self) -> int:
        """Bytes of intermediates per scored row (default: a few D-vectors of float32)."""
        return 16 * self.feat_dim

    def chunk_rows(self) -> int:
        """Rows scored at once: the memory budget over the cost of one row."""
        return max(1, int(self.memory_budget // max(1, self.row_bytes())))

    @abc.abstractmethod
    def _score_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """Features float32 (n, D) on the head's device -> anomaly scores float32 (n,)."""

    def score_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Features float (n, D) (any device) -> scores float32 (n,) on the head's device."""
        dev, step = self.device, self.chunk_rows()
        if len(x) <= step:
            return self._score_chunk(x.to(dev, torch.float32, non_blocking=True)).float()
        return torch.cat([self._score_chunk(x[i:i + step].to(dev, torch.float32, non_blocking=True)).float()
                          for i in range(0, len(x), step)])

    @torch.no_grad()
    def score_map(self, features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Features float (N, D, h, w) -> scores float32 (N, h, w) on the head's device, bilinearly
        resized to ``size``."""
        if features.ndim != 4 or features.shape[1] != self.feat_dim:
            raise ValueError(f"features {tuple(features.shape)} must be (N, {self.feat_dim}, h, w) for this head")
        was = self.training
        self.eval()
        n, d, h, w = features.shape
        scores = self.score_rows(features.permute(0, 2, 3, 1).reshape(-1, d)).reshape(n, 1, h, w)
        self.train(was)
        if size is not None:
            scores = resize_logits(scores, size)
        return scores[:, 0]
