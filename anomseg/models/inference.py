"""Inference: logits (and features) at the label size, optionally averaged over scales and flips."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomseg.models.base import SegOutput, resize_logits, to_model_input

# The CAOS / CSAIL test scales are given as shorter-side lengths (300, 375, 450, 525, 600) for
# StreetHazards' 720-pixel-high images; as factors of the input size that is:
CAOS_SCALES = (300 / 720, 375 / 720, 450 / 720, 525 / 720, 600 / 720)


@torch.no_grad()
def predict(model, images: torch.Tensor, size: tuple[int, int] | None = None, scales=(1.0,), flip: bool = False,
            average: str = "logits") -> SegOutput:
    """Run ``model`` in eval mode and return logits resized to ``size`` (default: the input size).

    Args:
        images: uint8 (N, H, W, 3) / (N, 3, H, W) or float (N, 3, H, W) in [0, 1].
        scales: input resize factors; outputs are resized to ``size`` and averaged.
        flip: also run horizontally flipped inputs (flipped back before averaging).
        average: ``"logits"`` (mean logits; MaxLogit stays a true max logit) or ``"probs"``
            (mean softmax, as CAOS; the returned "logits" are log mean probabilities, so softmax of
            them is the mean posterior and MSP is exact, while MaxLogit becomes log MSP).
    Returns:
        :class:`SegOutput` with logits float32 (N, K, *size) and the features of the scale-1.0,
        unflipped pass (or of the first scale) at the backbone's resolution.
    """
    if average not in ("logits", "probs"):
        raise ValueError(f"average={average!r}: choose 'logits' or 'probs'")
    was = model.training
    model.eval()
    try:
        x = to_model_input(images)
        size = tuple(size or x.shape[-2:])
        total, features, n = None, None, 0
        for s in scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False,
                                                  recompute_scale_factor=False)
            for flipped in ((False, True) if flip else (False,)):
                out = model(xs.flip(-1) if flipped else xs)
                logits = out.logits.flip(-1) if flipped else out.logits
                logits = resize_logits(logits.float(), size)
                term = torch.softmax(logits, 1) if average == "probs" else logits
                total = term if total is None else total + term
                n += 1
                if features is None or (s == 1.0 and not flipped):
                    features = out.features
        mean = total / n
        logits = mean.clamp(min=1e-30).log() if average == "probs" else mean
        return SegOutput(logits, features)
    finally:
        model.train(was)
