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
    may override :meth:`row_bytes` (bytes of intermediates one row needs). A head that also reads the
    segmenter's logits at each row (``uses_logits = True``: UEM, PixOOD) implements
    ``_score_chunk(x, logits: float32 (n, K))`` and is given them by every caller.
    """

    feat_dim: int
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    uses_logits: bool = False

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

    def score_rows(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Features float (n, D) (any device) -> scores float32 (n,) on the head's device; ``logits`` float
        (n, K): the segmenter's logits at the rows, for a head that ``uses_logits``."""
        dev, step = self.device, self.chunk_rows()
        if self.uses_logits and logits is None:
            raise ValueError(f"head {getattr(self, 'name', type(self).__name__)!r} fuses the segmenter's logits: "
                             f"pass them with the features")

        def chunk(i, j):
            args = (x[i:j].to(dev, torch.float32, non_blocking=True),)
            if self.uses_logits:
                args += (logits[i:j].to(dev, torch.float32, non_blocking=True),)
            return self._score_chunk(*args).float()

        if len(x) <= step:
            return chunk(0, len(x))
        return torch.cat([chunk(i, i + step) for i in range(0, len(x), step)])

    @torch.no_grad()
    def score_map(self, features: torch.Tensor, size: tuple[int, int] | None = None,
                  logits: torch.Tensor | None = None) -> torch.Tensor:
        """Features float (N, D, h, w) -> scores float32 (N, h, w) on the head's device, bilinearly
        resized to ``size``; ``logits`` float (N, K, h, w) on the same grid for a head that ``uses_logits``."""
        if features.ndim != 4 or features.shape[1] != self.feat_dim:
            raise ValueError(f"features {tuple(features.shape)} must be (N, {self.feat_dim}, h, w) for this head")
        was = self.training
        self.eval()
        n, d, h, w = features.shape
        rows_logits = None
        if logits is not None:
            if logits.ndim != 4 or tuple(logits.shape[-2:]) != (h, w) or len(logits) != n:
                raise ValueError(f"logits {tuple(logits.shape)} must be (N, K, h, w) on the features' grid {(n, h, w)}")
            rows_logits = logits.permute(0, 2, 3, 1).reshape(n * h * w, -1)
        scores = self.score_rows(features.permute(0, 2, 3, 1).reshape(-1, d), rows_logits).reshape(n, 1, h, w)
        self.train(was)
        if size is not None:
            scores = resize_logits(scores, size)
        return scores[:, 0]
