"""Scores with statistics fitted on data, streaming over batches in bounded memory.

* :class:`StandardizedMaxLogit` (Jung et al., ICCV 2021): per predicted class c, the mean and
  standard deviation of the max logit over training pixels; score = -(max logit - mu_c) / sigma_c;
* :class:`KLMatching` (Hendrycks et al., ICML 2022), pixel-native: the template d_c is the mean
  softmax of the validation pixels predicted as c; score = min_c KL(p || d_c).

Statistics are float64 sums and exact pixel counts, so fitting in one batch or in many gives
the same result up to float64 rounding; they are kept on the device of the logits they are fed.
"""

from __future__ import annotations

import torch

from anomseg.options import Positive

from anomseg.scores.posthoc import _check


def _valid_mask(logits: torch.Tensor, semantic: torch.Tensor | None) -> torch.Tensor:
    if semantic is None:
        return torch.ones(logits.shape[0], *logits.shape[2:], dtype=torch.bool, device=logits.device)
    if semantic.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"semantic {tuple(semantic.shape)} must match logits (N, H, W) {(logits.shape[0], *logits.shape[2:])}")
    return semantic != 255


class StandardizedMaxLogit:
    """Fit with ``update(logits, semantic=None)`` over training batches, then call on logits.

    ``semantic`` (N, H, W), if given, excludes ignore (255) pixels from the statistics.
    """

    name = "sml"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.sum = torch.zeros(num_classes, dtype=torch.float64)
        self.sumsq = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, semantic: torch.Tensor | None = None) -> None:
        z = _check(logits)
        m, c = z.max(dim=1)
        keep = _valid_mask(z, semantic)
        m, c = m[keep].double(), c[keep]
        self.count, self.sum, self.sumsq = (t.to(z.device) for t in (self.count, self.sum, self.sumsq))
        self.count += torch.bincount(c, minlength=self.num_classes).double()
        self.sum += torch.zeros_like(self.sum).index_add_(0, c, m)  # per-batch sums first, as before
        self.sumsq += torch.zeros_like(self.sumsq).index_add_(0, c, m * m)

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) per class, float64 (K,); classes never predicted get mean 0, std 1."""
        n = self.count.clamp(min=1)
        mean = self.sum / n
        var = (self.sumsq / n - mean * mean).clamp(min=0)
        std = var.sqrt()
        seen = self.count > 1
        return torch.where(seen, mean, torch.zeros_like(mean)), torch.where(seen & (std > 0), std, torch.ones_like(std))

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.count.sum() == 0:
            raise RuntimeError("StandardizedMaxLogit is not fitted: call update() on training batches first")
        z = _check(logits)
        m, c = z.max(dim=1)
        mean, std = (t.to(z.device, torch.float32) for t in self.stats())
        return -(m - mean[c]) / std[c]

    def state_dict(self) -> dict:
        return {"count": self.count.cpu(), "sum": self.sum.cpu(), "sumsq": self.sumsq.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.sum, self.sumsq = state["count"].double(), state["sum"].double(), state["sumsq"].double()


class KLMatching:
    """Fit with ``update(logits, semantic=None)`` over validation batches, then call on logits."""

    name = "kl_matching"

    def __init__(self, num_classes: int, eps: Positive = 1e-8):
        self.num_classes = num_classes
        self.eps = eps
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.sum = torch.zeros(num_classes, num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, semantic: torch.Tensor | None = None) -> None:
        z = _check(logits)
        p = torch.softmax(z.double(), dim=1)  # float64: per-pixel values independent of batch shape
        c = p.max(dim=1).indices
        keep = _valid_mask(z, semantic)
        p = p.permute(0, 2, 3, 1)[keep]
        c = c[keep]
        self.count, self.sum = self.count.to(z.device), self.sum.to(z.device)
        self.count += torch.bincount(c, minlength=self.num_classes).double()
        self.sum.index_add_(0, c, p)

    def templates(self) -> torch.Tensor:
        """float64 (K, K): row c = mean posterior of pixels predicted as c (uniform if none)."""
        uniform = torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64, device=self.sum.device)
        t = self.sum / self.count.clamp(min=1)[:, None]
        return torch.where((self.count > 0)[:, None], t, uniform)

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.count.sum() == 0:
            raise RuntimeError("KLMatching is not fitted: call update() on validation batches first")
        z = _check(logits)
        logp = torch.log_softmax(z, dim=1)
        p = logp.exp()
        d = self.templates().to(z.device, torch.float32)  # (K, K)
        logd = d.clamp(min=self.eps).log()
        # KL(p || d_c) = sum_k p_k (log p_k - log d_ck), for every template c: (N, C, H, W)
        neg_entropy = (p * logp).sum(dim=1, keepdim=True)
        cross = torch.einsum("nkhw,ck->nchw", p, logd)
        return (neg_entropy - cross).amin(dim=1)

    def state_dict(self) -> dict:
        return {"count": self.count.cpu(), "sum": self.sum.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.sum = state["count"].double(), state["sum"].double()


@torch.no_grad()
def mc_dropout(model: torch.nn.Module, images: torch.Tensor, passes: int = 8, size: tuple[int, int] | None = None) -> torch.Tensor:
    """MC dropout (Gal & Ghahramani, ICML 2016): entropy of the mean softmax over ``passes``
    stochastic forward passes with dropout active and batch norm in eval mode.

    Returns float32 (N, H, W) at ``size`` (default: the logits' size).
    """
    from anomseg.models.base import resize_logits

    dropouts = [m for m in model.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout3d))]
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layer: MC dropout needs one")
    was = model.training
    model.eval()
    for m in dropouts:
        m.train()
    try:
        mean = None
        for _ in range(passes):
            logits = model(images).logits
            if size is not None:
                logits = resize_logits(logits, size)
            p = torch.softmax(logits.float(), dim=1)
            mean = p if mean is None else mean + p
        mean = mean / passes
    finally:
        model.train(was)
    return -(mean * mean.clamp(min=1e-12).log()).sum(dim=1)
