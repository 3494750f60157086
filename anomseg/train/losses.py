"""Outlier-aware segmentation losses on (N, K, H, W) logits, pixel by pixel.

Every loss returns ``(loss, counted)``: a float (N, H, W) map and the bool (N, H, W) mask of the
pixels it counts; the trainer sums the map over counted pixels and divides by their number over
the whole global batch. Pixels: *known* (``semantic`` a class id and not an outlier), *outlier*
(``outlier`` True), void (everything else: never counted).

Formulas (per pixel, p = softmax(z), K classes):

* ``ce``: known -log p_y; outliers ignored (the baseline);
* ``entropic`` (entropic open-set, Dhamija, Guenther & Boult, NeurIPS 2018): known -log p_y;
  outlier -(1/K) sum_k log p_k (its minimum is the uniform posterior, maximal entropy);
* ``objectosphere`` (same paper): entropic + zeta * J_R with J_R = max(xi - ||F||, 0)^2 on known
  and ||F||^2 on outlier pixels, F the penultimate feature (its norm resized to the label size);
* ``energy`` (energy-bounded fine-tuning, Liu et al., NeurIPS 2020): known -log p_y
  + lam * max(0, E - m_in)^2, outlier lam * max(0, m_out - E)^2 with E = -T logsumexp(z / T);
  the paper averages the two hinge terms over in- and out-pixels separately, here every pixel
  carries its own term;
* ``oe`` (outlier exposure, Hendrycks et al., ICLR 2019): known -log p_y; outlier
  lam * -(1/K) sum_k log p_k (cross-entropy to the uniform posterior);
* ``background`` ((K+1)-way): outliers are the extra class K; needs a model with K + 1 outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomseg.models.base import resize_logits


def _known(semantic: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
    return (semantic != 255) & ~outlier


def _nll(logp: torch.Tensor, semantic: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    target = torch.where(known, semantic, torch.zeros_like(semantic))
    return -logp.gather(1, target[:, None])[:, 0]


def ce(logits, semantic, outlier, **_):
    known = _known(semantic, outlier)
    return _nll(torch.log_softmax(logits, 1), semantic, known), known


def entropic(logits, semantic, outlier, **_):
    known = _known(semantic, outlier)
    logp = torch.log_softmax(logits, 1)
    loss = torch.where(known, _nll(logp, semantic, known), -logp.mean(1))
    return loss, known | outlier


def objectosphere(logits, semantic, outlier, features=None, xi: float = 10.0, zeta: float = 0.01, **_):
    if features is None:
        raise ValueError("objectosphere needs the penultimate features")
    loss, counted = entropic(logits, semantic, outlier)
    norm = resize_logits(features.float().norm(dim=1, keepdim=True), tuple(semantic.shape[-2:]))[:, 0]
    known = _known(semantic, outlier)
    ring = torch.where(known, F.relu(xi - norm) ** 2, norm ** 2)
    return loss + zeta * ring, counted


def energy(logits, semantic, outlier, m_in: float = -25.0, m_out: float = -7.0, lam: float = 0.1,
           temperature: float = 1.0, **_):
    known = _known(semantic, outlier)
    logp = torch.log_softmax(logits, 1)
    e = -temperature * torch.logsumexp(logits / temperature, 1)
    loss = torch.where(known, _nll(logp, semantic, known) + lam * F.relu(e - m_in) ** 2, lam * F.relu(m_out - e) ** 2)
    return loss, known | outlier


def oe(logits, semantic, outlier, lam: float = 0.5, **_):
    known = _known(semantic, outlier)
    logp = torch.log_softmax(logits, 1)
    loss = torch.where(known, _nll(logp, semantic, known), -lam * logp.mean(1))
    return loss, known | outlier


def background(logits, semantic, outlier, **_):
    k = logits.shape[1] - 1
    target = torch.where(outlier, torch.full_like(semantic, k), semantic)
    counted = target != 255
    safe = torch.where(counted, target, torch.zeros_like(target))
    return -torch.log_softmax(logits, 1).gather(1, safe[:, None])[:, 0], counted


LOSSES = {"ce": ce, "entropic": entropic, "objectosphere": objectosphere, "energy": energy, "oe": oe,
          "background": background}
NEEDS_OUTLIERS = {"entropic", "objectosphere", "energy", "oe", "background"}


def pixel_loss(name: str, logits, semantic, outlier, features=None, **options):
    """``(loss map, counted mask)`` of loss ``name`` (see module docstring); logits at label size."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name](logits.float(), semantic, outlier, features=features, **options)
