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

Under multi-scale inference these see the MEAN LOGITS. The CAOS reference (hendrycks/anomaly-seg
``eval_ood.py``) instead averages softmax probabilities over its five scales and then computes its
``--ood`` scores on those probabilities; to reproduce its published tables digit for digit, three
scores take the mean probabilities (N, K, H, W) and are named for what they compute:

* ``max_mean_prob``: -max_k pbar_k (CAOS ``--ood maxlogit``: really an MSP of the averaged posterior);
* ``max_double_softmax``: -max_k softmax(pbar)_k (CAOS ``--ood msp``: softmax applied a second time);
* ``neg_mean_prob0``: -pbar_0 (CAOS ``--ood background``, sign as in the reference: conf = pbar_0 and
  the anomaly score is -conf).

``exclude_back=True`` drops class 0 first (CAOS ``--exclude_back``). Each function carries
``consumes`` = ``"logits"`` or ``"probs"``: the inference step hands it exactly that.
"""

from __future__ import annotations

import torch

from anomseg.options import NonNegativeInt, Positive, PositiveInt


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


def energy(logits: torch.Tensor, temperature: Positive = 1.0) -> torch.Tensor:
    """Free energy -T logsumexp(z / T)."""
    return -temperature * torch.logsumexp(_check(logits) / temperature, dim=1)


def background(logits: torch.Tensor, index: NonNegativeInt = 0) -> torch.Tensor:
    """Softmax probability of class ``index`` (a background / void class trained as such)."""
    return torch.softmax(_check(logits), dim=1)[:, index]


def gen(logits: torch.Tensor, gamma: Positive = 0.1, top_m: PositiveInt | None = None) -> torch.Tensor:
    """Generalized entropy over the ``top_m`` largest probabilities (all classes by default)."""
    p = torch.softmax(_check(logits), dim=1)
    if top_m is not None and top_m < p.shape[1]:
        p = p.topk(top_m, dim=1).values
    return (p.pow(gamma) * (1 - p).pow(gamma)).sum(dim=1)


def logit_norm(logits: torch.Tensor) -> torch.Tensor:
    """-||z||_2: objectosphere training pushes unknown pixels towards small logit / feature norms."""
    return -_check(logits).norm(dim=1)


def _probs(probs: torch.Tensor, exclude_back: bool) -> torch.Tensor:
    if probs.ndim != 4:
        raise ValueError(f"probabilities must be (N, K, H, W); got shape {tuple(probs.shape)}")
    probs = probs.float()
    return probs[:, 1:] if exclude_back else probs


def max_mean_prob(probs: torch.Tensor, exclude_back: bool = False) -> torch.Tensor:
    """CAOS ``--ood maxlogit``: -max over classes of the scale-averaged probabilities."""
    return -_probs(probs, exclude_back).amax(dim=1)


def max_double_softmax(probs: torch.Tensor, exclude_back: bool = False) -> torch.Tensor:
    """CAOS ``--ood msp``: -max of softmax applied to the scale-averaged probabilities."""
    return -torch.softmax(_probs(probs, exclude_back), dim=1).amax(dim=1)


def neg_mean_prob0(probs: torch.Tensor, exclude_back: bool = False) -> torch.Tensor:
    """CAOS ``--ood background``: minus the averaged probability of the first (remaining) class."""
    return -_probs(probs, exclude_back)[:, 0]


for _f in (msp, max_logit, entropy, energy, background, gen, logit_norm):
    _f.consumes = "logits"
for _f in (max_mean_prob, max_double_softmax, neg_mean_prob0):
    _f.consumes = "probs"

POSTHOC = {"msp": msp, "max_logit": max_logit, "entropy": entropy, "energy": energy, "gen": gen, "background": background,
           "logit_norm": logit_norm, "max_mean_prob": max_mean_prob, "max_double_softmax": max_double_softmax,
           "neg_mean_prob0": neg_mean_prob0}
