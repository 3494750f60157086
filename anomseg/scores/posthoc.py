"""Post-hoc pixel scores from logits: (N, K, H, W) -> float32 (N, H, W), higher = more anomalous.

Formulas:

* MSP (Hendrycks & Gimpel, ICLR 2017): -max_k softmax(z)_k;
* MaxLogit (Hendrycks et al., ICML 2022): -max_k z_k;
* entropy: -sum_k p_k log p_k;
* energy (Liu et al., NeurIPS 2020): -T logsumexp(z / T); E(x) is low in-distribution, so the
  anomaly score is the energy itself;
* background: the softmax probability of a background / void class (CAOS ``--ood background``);
* GEN (Liu, Lochman & Zach, CVPR 2023): sum over the M largest probabilities of
  p^gamma (1 - p)^gamma (gamma = 0.1); high when the posterior is spread;
* logit norm: -||z||_2 (for objectosphere-trained models, Dhamija et al., NeurIPS 2018).
"""

from __future__ import annotations

import torch


def _check(logits: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 4:
        raise ValueError(f"logits must be (N, K, H, W); got shape {tuple(logits.shape)}")
    return logits.float()


def msp(logits: torch.Tensor) -> torch.Tensor:
    """-max softmax probability."""
    return -torch.softmax(_check(logits), dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """-max logit."""
    return -_check(logits).amax(dim=1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the softmax (nats)."""
    logp = torch.log_softmax(_check(logits), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy -T logsumexp(z / T)."""
    return -temperature * torch.logsumexp(_check(logits) / temperature, dim=1)


def background(logits: torch.Tensor, index: int = 0) -> torch.Tensor:
    """Softmax probability of class ``index`` (a background / void class trained as such)."""
    return torch.softmax(_check(logits), dim=1)[:, index]


def gen(logits: torch.Tensor, gamma: float = 0.1, top_m: int | None = None) -> torch.Tensor:
    """Generalized entropy over the ``top_m`` largest probabilities (all classes by default)."""
    p = torch.softmax(_check(logits), dim=1)
    if top_m is not None and top_m < p.shape[1]:
        p = p.topk(top_m, dim=1).values
    return (p.pow(gamma) * (1 - p).pow(gamma)).sum(dim=1)


def logit_norm(logits: torch.Tensor) -> torch.Tensor:
    """-||z||_2: objectosphere training pushes unknown pixels towards small logit / feature norms."""
    return -_check(logits).norm(dim=1)


POSTHOC = {"msp": msp, "max_logit": max_logit, "entropy": entropy, "energy": energy, "gen": gen, "background": background,
           "logit_norm": logit_norm}
