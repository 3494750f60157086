"""Inference: what every anomaly method can consume, at the label size, over scales and flips.

:func:`predict` runs the backbone on each scale (and flip) and returns a :class:`Prediction` with
the MEAN LOGITS (what logit scores such as MaxLogit, energy and SML need), the MEAN PROBABILITIES
(the CAOS convention: softmax per pass, then averaged) and the FEATURES of the scale-1, unflipped
pass (None when no such pass exists: a feature at another scale is not the feature a head was
trained on).

The CAOS / CSAIL test-time resizing (``preset="caos"``; hendrycks/anomaly-seg ``dataset.py`` +
``defaults.py``, facts in ../shared/docs/FORMATS.md): for each shorter-side length s in
(300, 375, 450, 525, 600), scale = min(s / shorter side, 1000 / longer side), each side
``int(side * scale)`` rounded UP to a multiple of 8, the uint8 image resized with PIL bilinear (which
antialiases when shrinking); on 720x1280 that gives 304x536 ... 568x1000.
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image

from anomseg.models.base import resize_logits, to_model_input
from anomseg.options import NonEmpty, OptionError, Positive, PositiveInt, check_options

# hendrycks/anomaly-seg defaults.py: DATASET.imgSizes, imgMaxSize, padding_constant
CAOS_SHORT_SIDES = (300, 375, 450, 525, 600)
CAOS_MAX_SIZE = 1000
CAOS_MULTIPLE = 8
PRESETS = ("none", "caos")


class Prediction:
    """What :func:`predict` gives the methods, all at the label size except the features.

    Attributes:
        logits: float32 (N, K, H, W) mean of the passes' logits.
        probs: float32 (N, K, H, W) mean of the passes' softmax probabilities (with one pass: the
            softmax of ``logits``, computed when first asked for).
        features: float (N, D, h, w) of the scale-1, unflipped pass at the backbone's stride, or None
            when the passes do not include the unresized image.
        queries: a mask-classification backbone's :class:`~anomseg.models.base.MaskQueries` of every pass,
            as (queries, flipped) pairs (a flipped pass's score maps must be flipped back); [] otherwise.
        inputs: ``{module: its input tensor}`` in the scale-1, unflipped pass for the modules :func:`predict`
            was asked to tap (a method's :meth:`~anomseg.methods.Method.taps`), so that a method reading
            inner responses needs no backbone pass of its own; {} otherwise.
        grid_logits: float32 (N, K, h, w): the scale-1, unflipped pass's logits on the features' grid (bilinearly
            resized when the backbone gives them at another resolution: what the feature bank stores beside
            each row), or None with ``features``.
        windows: under sliding-window inference (:func:`window_origins`), one :class:`Window` per window (its
            features and grid logits; ``features`` is then None and ``logits`` the window average); else [].
    """

    __slots__ = ("logits", "features", "_probs", "queries", "inputs", "grid_logits", "windows")

    def __init__(self, logits: torch.Tensor, probs: torch.Tensor | None, features: torch.Tensor | None,
                 queries: list | None = None, inputs: dict | None = None, grid_logits: torch.Tensor | None = None,
                 windows: list | None = None):
        self.logits, self._probs, self.features = logits, probs, features
        self.queries = queries or []
        self.inputs = inputs or {}
        self.grid_logits = grid_logits
        self.windows = windows or []

    @property
    def probs(self) -> torch.Tensor:
        if self._probs is None:
            self._probs = torch.softmax(self.logits, 1)
        return self._probs


AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# UEM's evaluation windows (NazirNayal8/UEM-likelihood-ratio sliding_window_inference, EVAL_WINDOW_SIZE / EVAL_STRIDE)
UEM_WINDOW, UEM_STRIDE = (518, 1036), (140, 140)


class Window(NamedTuple):
    """One window of sliding-window inference: its top-left corner and size in the image, and the backbone's
    features (N, D, h, w) and grid logits (N, K, h, w) on it."""

    y: int
    x: int
    height: int
    width: int
    features: torch.Tensor
    grid_logits: torch.Tensor


def inference_settings(preset: Literal["none", "caos"] = "none",
                       scales: Annotated[list[Positive], NonEmpty()] = (1.0,), flip: bool = False,
                       amp: Literal["none", "bf16", "fp16"] = "none",
                       window: Annotated[list[PositiveInt], NonEmpty()] | None = None,
                       window_stride: Annotated[list[PositiveInt], NonEmpty()] = UEM_STRIDE) -> dict:
    """The ``inference`` section, declared (:mod:`anomseg.options`): ``preset``, input ``scales`` (each > 0,
    at least one), ``flip``, ``amp``, and sliding windows: ``window`` [height, width] (None: the whole image;
    UEM: [518, 1036]) moved by ``window_stride`` [rows, columns] (UEM: [140, 140])."""
    out = {"preset": preset, "scales": list(scales), "flip": flip, "amp": amp}
    if window is not None:
        if len(window) != 2 or len(window_stride) != 2:
            raise OptionError(f"inference.window {list(window)} / window_stride {list(window_stride)}: give "
                              f"[height, width] and [rows, columns]")
        if preset != "none" or list(scales) != [1.0] or flip:
            raise OptionError("inference.window: sliding windows run at scale 1.0 without flip or preset; drop "
                              "inference.scales / flip / preset, or the window")
        out.update(window=list(window), window_stride=list(window_stride))
    return out


def check_inference_settings(inference: dict, owner: str = "inference") -> dict:
    """``inference`` checked against :func:`inference_settings` and completed with its defaults."""
    return inference_settings(**check_options(owner, inference_settings, inference))


def window_origins(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: 0, stride, 2 stride ... below length - window, then length - window (UEM's
    rule: 720 rows, window 518, stride 140 -> 0, 140, 202). Where (length - window) is a multiple of the stride the
    release adds no last window and leaves the strip after the last one uncovered (a NaN map); here the
    last window always ends at the edge. A length shorter than the window: ValueError."""
    if length < window:
        raise ValueError(f"the image side {length} is shorter than the inference window {window}; lower "
                         f"inference.window or drop it")
    starts = list(range(0, length - window, stride))
    if not starts or starts[-1] != length - window:
        starts.append(length - window)
    return starts


def predict_windows(model, images: torch.Tensor, size: tuple[int, int], window, stride, amp: str = "none") -> Prediction:
    """Sliding-window inference as UEM evaluates (``sliding_window_inference``): each window's logits bilinearly
    resized to the window, summed over the windows, divided by the per-pixel window count; the windows' features
    and grid logits kept for the methods that score per window."""
    x = to_model_input(images)
    h, w = x.shape[-2:]
    device = next(model.parameters()).device
    windows, logits = [], []
    for y0 in window_origins(h, window[0], stride[0]):
        for x0 in window_origins(w, window[1], stride[1]):
            with autocast(device, amp):
                out = model(x[..., y0:y0 + window[0], x0:x0 + window[1]])
            windows.append(Window(y0, x0, window[0], window[1], out.features, out.grid_logits()))
            logits.append((windows[-1], out.logits))
    return Prediction(resize_logits(window_average(logits, (h, w)), tuple(size)), None, None, windows=windows)


def window_average(maps: list[tuple["Window", torch.Tensor]], image_size: tuple[int, int]) -> torch.Tensor:
    """Per-window maps (N, C, h, w), each bilinearly resized to its window, averaged where windows overlap, at
    ``image_size``: float32 (N, C, H, W)."""
    total = count = None
    for win, m in maps:
        m = resize_logits(m.float(), (win.height, win.width))
        if total is None:
            total = m.new_zeros((m.shape[0], m.shape[1], *image_size))
            count = m.new_zeros((1, 1, *image_size))
        total[..., win.y:win.y + win.height, win.x:win.x + win.width] += m
        count[..., win.y:win.y + win.height, win.x:win.x + win.width] += 1
    return total / count


def autocast(device: torch.device | str, amp: str = "none"):
    """The autocast context of an ``amp`` setting (``"none"``, ``"bf16"``, ``"fp16"``) on ``device``."""
    if amp not in AMP:
        raise ValueError(f"amp {amp!r}: choose one of {', '.join(AMP)}")
    device = torch.device(device)
    return torch.autocast(device.type, dtype=AMP[amp] or torch.float32, enabled=AMP[amp] is not None)


def caos_input_sizes(height: int, width: int, short_sides=CAOS_SHORT_SIDES, max_size: int = CAOS_MAX_SIZE,
                     multiple: int = CAOS_MULTIPLE) -> list[tuple[int, int]]:
    """The (H, W) inputs CAOS feeds for an image of ``height`` x ``width`` (see module docstring)."""
    sizes = []
    for s in short_sides:
        scale = min(s / float(min(height, width)), max_size / float(max(height, width)))
        h, w = int(height * scale), int(width * scale)
        sizes.append((((h - 1) // multiple + 1) * multiple, ((w - 1) // multiple + 1) * multiple))
    return sizes


def pil_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, H, W, 3) or (N, 3, H, W) -> uint8 (N, 3, *size), PIL bilinear per image (as CAOS)."""
    if images.dtype != torch.uint8:
        raise ValueError("the CAOS preset resizes uint8 images with PIL, as the reference does; pass uint8 RGB")
    hwc = images if images.shape[-1] == 3 else images.permute(0, 2, 3, 1)
    out = [np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.BILINEAR)) for im in hwc.cpu().numpy()]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(images.device)


def _passes(images: torch.Tensor, scales, preset: str):
    """Yield (input batch, is the unresized image) for every scale."""
    if preset == "caos":
        h, w = (images.shape[1:3] if images.shape[-1] == 3 and images.shape[1] != 3 else images.shape[-2:])
        for size in caos_input_sizes(int(h), int(w)):
            yield pil_resize(images, size), size == (int(h), int(w))
        return
    x = to_model_input(images)
    for s in scales:
        if s == 1.0:
            yield x, True
        else:
            yield torch.nn.functional.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False,
                                                  recompute_scale_factor=False), False


@torch.no_grad()
def predict(model, images: torch.Tensor, size: tuple[int, int] | None = None, scales=(1.0,), flip: bool = False,
            preset: str = "none", amp: str = "none", taps=()) -> Prediction:
    """Run ``model`` in eval mode over scales / flips; see :class:`Prediction` for what comes back.

    Args:
        images: uint8 (N, H, W, 3) / (N, 3, H, W) or float (N, 3, H, W) in [0, 1], on the model's device.
        size: (H, W) of the outputs (default: the input size).
        scales: input resize factors (bilinear); ignored under ``preset="caos"``.
        flip: also run horizontally flipped inputs (flipped back before averaging).
        preset: ``"none"`` or ``"caos"`` (CAOS's five PIL-resized inputs; uint8 images only).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``: the backbone runs under autocast; logits and
            probabilities are float32 either way.
        taps: modules of ``model`` whose inputs the scale-1, unflipped pass records (``Prediction.inputs``).
    """
    if preset not in PRESETS:
        raise ValueError(f"inference preset {preset!r}: choose one of {', '.join(PRESETS)}")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        if size is None:
            size = tuple(images.shape[1:3] if images.shape[1] != 3 and images.shape[-1] == 3 else images.shape[-2:])
        logit_sum = prob_sum = features = grid_logits = None
        n, queries, inputs = 0, [], {}
        for x, unresized in _passes(images, scales, preset):
            for flipped in ((False, True) if flip else (False,)):
                hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, args[0]))
                         for m in (taps if unresized and not flipped else ())]
                try:
                    with autocast(device, amp):
                        out = model(x.flip(-1) if flipped else x)
                finally:
                    for h in hooks:
                        h.remove()
                logits = out.logits.flip(-1) if flipped else out.logits
                logits = resize_logits(logits.float(), tuple(size))
                n += 1
                if n == 1:
                    logit_sum = first = logits
                else:  # per-pass probabilities are needed only to average them
                    prob_sum = torch.softmax(first, 1) if prob_sum is None else prob_sum
                    logit_sum, prob_sum = logit_sum + logits, prob_sum + torch.softmax(logits, 1)
                if unresized and not flipped:
                    features = out.features
                    grid_logits = out.grid_logits()
                if getattr(out, "queries", None) is not None:
                    queries.append((out.queries, flipped))
        return Prediction(logit_sum / n if n > 1 else logit_sum, prob_sum / n if n > 1 else None, features, queries,
                          inputs, grid_logits)
    finally:
        model.train(was)


def predict_with(model, images: torch.Tensor, size: tuple[int, int], inference: dict, taps=()) -> Prediction:
    """:func:`predict` (or :func:`predict_windows` with ``window``) under an ``inference`` section ``{preset, scales,
    flip, amp, window, window_stride}`` (missing keys: defaults)."""
    if inference.get("window"):
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return predict_windows(model, images, size, inference["window"],
                                       inference.get("window_stride", UEM_STRIDE), inference.get("amp", "none"))
        finally:
            model.train(was)
    return predict(model, images, size=size, scales=inference.get("scales", (1.0,)), flip=inference.get("flip", False),
                   preset=inference.get("preset", "none"), amp=inference.get("amp", "none"), taps=taps)
