"""CORES, pixel by pixel: convolutional responses of the kernels behind each pixel's prediction.

CORES (Tang et al., "CORES: Convolutional Response-based Score for Out-of-distribution Detection",
CVPR 2024) observes that the kernels that carry a prediction respond more strongly, and more often
significantly, to in-distribution inputs than to outliers. It finds those kernels by backtracking from
the most prominent prediction through the layers, and scores an input by the magnitude of their
responses and the frequency of significant ones.

Source note: the paper's full text was not reachable from this project's search tool; what is
implemented here follows its abstract and the public re-implementation
anju-chhetri/CodeFromPapers (CORES/cores.py): k kernels per layer (64 there), selected first as the
classifier weights of the predicted class with the largest values, then layer by layer as the input
kernels whose weights (maximum over the kernel's spatial taps) summed over the selected output kernels
are largest; response magnitude RM = mean over the selected kernels of max(0, r - tau) and response
frequency RF = the fraction of them with r > tau (tau = 0 there); a layer's score RM^lambda_m x
RF^lambda_f (lambda = 1 there); the layers combined by their product. Higher CORES = more
in-distribution; the anomaly score here is its negative (same ranking, higher = more anomalous). Only
the positive extremities are used (the re-implementation's final score also drops the negative ones).

The pixel setting (our design, not the paper's): an image-level CORES takes each kernel's spatial
maximum; here every pixel has its own prediction, so the kernels are selected per pixel from that
pixel's predicted class (one selection per class, computed once in :meth:`CORES.setup`), and RM / RF
are computed from the kernels' responses *at that pixel*: for every layer the per-class RM and RF maps
(N, K, h, w) are resized bilinearly to the label grid, then each pixel reads the map of its own
predicted class (argmax of the logits at the label size). The responses are the *inputs* of the
convolutions in the chain: the first is the classifier's last convolution (its input: the penultimate
features), then ``layers`` (dotted module names of further convolutions, deepest first, each producing
the channels the previous one consumes: a pointwise BatchNorm / ReLU between them keeps the channel
correspondence). The responses are read from the inference pass (:meth:`CORES.taps`: the evaluation, the
visualizer and :class:`~anomseg.segmenter.AnomalySegmenter` ask :func:`~anomseg.models.inference.predict` to
record them), so CORES costs no backbone pass of its own there; a caller that does not tap them gets one pass
run by the method, with hooks that live only during it (the same numbers: the one plain pass either way).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.config import ConfigError
from anomseg.methods.base import Method, Observation, register_method
from anomseg.models.base import resize_logits
from anomseg.models.inference import predict
from anomseg.options import NonNegative, PositiveInt


def last_conv(module: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` inside ``module`` (a classifier conv or a small head)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"cores: the backbone's classifier ({type(module).__name__}) has no Conv2d to backtrack from")
    return convs[-1]


def kernel_selection(convs: Sequence[nn.Conv2d], kernels: int) -> list[torch.Tensor]:
    """Backtracked kernels per class: a list, one per conv, of float masks (K, C_in) with ``min(kernels, C_in)``
    ones per row.

    Row c of the first mask marks the ``kernels`` input channels of ``convs[0]`` (the classifier) with the
    largest weights for class c; row c of mask j marks the input channels of ``convs[j]`` whose weights
    (max over spatial taps) summed over the output channels marked in mask j-1 are largest."""
    masks = []
    relevance = convs[0].weight.detach().float().flatten(2).amax(2)  # (K, C_0)
    for j, conv in enumerate(convs):
        if j:
            w = conv.weight.detach().float().flatten(2).amax(2)  # (C_{j-1}, C_j): out x in
            relevance = masks[-1] @ w  # (K, C_j)
        k = min(kernels, relevance.shape[1])
        top = relevance.topk(k, dim=1).indices
        masks.append(torch.zeros_like(relevance).scatter_(1, top, 1.0))
    return masks


@register_method("cores")
class CORES(Method):
    """Pixel-wise CORES (see the module docstring); score float32 (N, H, W) = -prod_l RM_l^lm RF_l^lf.

    Options: ``layers`` (dotted names of further Conv2d modules, deepest first; default none: the
    classifier's input only), ``kernels`` (k per layer, 64), ``tau`` (threshold of a significant
    response, a float or one per layer incl. the classifier's input, 0), ``lambda_m`` / ``lambda_f``
    (exponents of magnitude and frequency, 1)."""

    consumes = "images"

    def __init__(self, layers: str | Sequence[str] = (), kernels: PositiveInt = 64, tau: float | Sequence[float] = 0.0,
                 lambda_m: NonNegative = 1.0, lambda_f: NonNegative = 1.0):
        if isinstance(layers, str):
            layers = [layers]
        self.layers, self.kernels = list(layers), int(kernels)
        n = len(self.layers) + 1
        taus = [float(t) for t in tau] if isinstance(tau, (list, tuple)) else [float(tau)] * n
        if len(taus) != n:
            raise ConfigError(f"cores: tau has {len(taus)} values for {n} layers (the classifier's input + {self.layers})")
        if self.kernels < 1:
            raise ConfigError(f"cores: kernels must be >= 1, got {kernels}")
        self.tau, self.lambda_m, self.lambda_f = taus, float(lambda_m), float(lambda_f)
        self.convs: list[nn.Conv2d] = []
        self.masks: list[torch.Tensor] = []

    def setup(self, model: nn.Module) -> None:
        convs = [last_conv(model.classifier())]
        for name in self.layers:
            try:
                conv = model.get_submodule(name)
            except AttributeError:
                raise ConfigError(f"cores: layer {name!r} is not a module of {type(model).__name__}") from None
            if not isinstance(conv, nn.Conv2d):
                raise ConfigError(f"cores: layer {name!r} is a {type(conv).__name__}, not a Conv2d")
            if conv.out_channels != convs[-1].in_channels:
                raise ConfigError(f"cores: layer {name!r} produces {conv.out_channels} channels but the layer after it "
                                  f"consumes {convs[-1].in_channels}; list convolutions that feed each other")
            convs.append(conv)
        if convs[0].out_channels != model.num_classes:
            raise ConfigError(f"cores: the classifier's last conv has {convs[0].out_channels} outputs for "
                              f"{model.num_classes} classes")
        self.convs, self.masks = convs, kernel_selection(convs, self.kernels)

    def taps(self, model: nn.Module) -> list[nn.Module]:
        if not self.convs:
            self.setup(model)
        return list(self.convs)

    def score(self, obs: Observation) -> torch.Tensor:
        if not self.convs:
            self.setup(obs.model)
        prediction = obs.prediction
        if not all(conv in getattr(prediction, "inputs", {}) for conv in self.convs):  # not tapped: a pass of its own
            prediction = predict(obs.model, obs.images, obs.size, amp=obs.amp, taps=self.convs)
        # consumes "images": one plain pass, so the inference pass's logits are that pass's
        logits, responses = prediction.logits, [prediction.inputs[conv].float() for conv in self.convs]
        pred = resize_logits(logits, obs.size).max(1, keepdim=True).indices  # (N, 1, H, W); max: 4x argmax on CPU
        total = None
        for r, mask, tau in zip(responses, self.masks, self.tau):
            mask = mask.to(r.device)
            k = mask.sum(1)[None, :, None, None]
            magnitude = torch.einsum("nchw,kc->nkhw", F.relu(r - tau), mask) / k
            frequency = torch.einsum("nchw,kc->nkhw", (r > tau).float(), mask) / k
            layer = magnitude.pow(self.lambda_m) * frequency.pow(self.lambda_f)  # (N, K, h, w)
            layer = resize_logits(layer, obs.size).gather(1, pred)[:, 0]
            total = layer if total is None else total * layer
        return (-total).float()
