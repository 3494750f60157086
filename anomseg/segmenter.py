"""Scoring images in one call: a backbone, an anomaly method and the inference settings together.

    seg = AnomalySegmenter.from_files(checkpoint="runs/demo/seg/checkpoints/best.pth", method="opengan_fea",
                                      head="runs/demo/heads/heads/opengan_fea/best.pth")
    scores = seg("street.png")            # float32 (H, W), higher = more anomalous
    seg.calibrate(test_set, tpr=0.95)     # the operating point: the threshold reaching 95 % TPR there
    mask = seg.threshold(scores)          # bool (H, W)
    inst = seg.instances("street.png")    # anomaly objects: masks (M, H, W), confidences (M,)
    seg = AnomalySegmenter.from_files(..., instances={"refine": "sam", "sam": {"model": "path/to/sam-vit-base"}})
    seg.save("pipeline.pt")               # backbone name + weights hash, inference, method + state
    seg = AnomalySegmenter.load("pipeline.pt")

A pipeline file is plain data (read with ``weights_only=True``): the backbone config (name, options,
checkpoint path) and the sha256 of its weights, the inference settings, the method's registry name,
options and fitted state (a head's whole checkpoint), and the operating point. Loading rebuilds the
backbone from its checkpoint (or from ``checkpoint=`` given to :meth:`load`) and refuses weights
whose hash differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from anomseg.data.images import MAX_PIXELS, ImageInputError, as_image_batch
from anomseg.errors import AnomsegError
from anomseg.files import save_torch_atomic
from anomseg.methods import Method, Observation, build_from_spec, build_method, check_consumable
from anomseg.metrics.histogram import ScoreHistogram
from anomseg.models.checkpoints import backbone_from_config
from anomseg.models.identity import weights_hash
from anomseg.models.inference import check_inference_settings, predict_with
from anomseg.options import PositiveInt, Range, check_options

PIPELINE_FORMAT = "anomseg-pipeline"
PIPELINE_FIELDS = ("version", "backbone", "num_classes", "weights", "inference", "method", "operating_point")
PIPELINE_VERSION = 1
INFERENCE = {"preset": "none", "scales": [1.0], "flip": False, "amp": "none"}


def _dataset_name(dataset) -> str:
    """How a calibration set is named in the operating point: its class and split (``StreetHazardsDataset val``)."""
    split = getattr(dataset, "split", None)
    return f"{type(dataset).__name__}{f' {split}' if split else ''}"


def describe_operating_point(op: dict | None) -> str:
    """``threshold 0.734 (TPR 95 % on 50 images of StreetHazardsDataset val)``; 'no operating point' for None."""
    if not op:
        return "no operating point"
    t = f"threshold {op['threshold']:.4g}"
    rule = op.get("rule", "tpr" if "tpr" in op else "number")
    where = f" on {op['images']} images" + (f" of {op['dataset']}" if op.get("dataset") else "") if op.get("images") else ""
    if rule == "tpr":
        return f"{t} (TPR {100 * op.get('target', op.get('tpr')):g} %{where})"
    if rule == "fpr":
        return f"{t} (FPR {100 * op['target']:g} %{where})"
    if rule == "best_f1":
        return f"{t} (best pixel F1{where})"
    return f"{t} (a number{': ' + op['note'] if op.get('note') else ''})"


class PipelineError(AnomsegError, ValueError):
    """A pipeline file cannot be used (unreadable, or its backbone's weights differ)."""


class AnomalySegmenter:
    """A backbone + a :class:`~anomseg.methods.Method` + inference settings (see the module docstring).

    Args:
        model: the backbone (moved to ``device``, eval mode).
        method: a method already set up for ``model`` (and fitted, if it is fitted).
        backbone: the backbone config ``{name, options, checkpoint}`` that rebuilds ``model``.
        inference: ``{preset, scales, flip, amp}`` (defaults: one unflipped pass, float32).
        device: default CUDA when available.
        operating_point: ``{"threshold": float, ...}`` used by :meth:`threshold` (set by :meth:`calibrate`).
        instances: the instance settings of :meth:`instances` (:data:`anomseg.instances.DEFAULTS`: ``min_size``,
            ``confidence``, ``refine: none | sam``, ``sam: {...}``); saved in the pipeline file.
    """

    def __init__(self, *, model, method: Method, backbone: dict, inference: dict | None = None, device=None,
                 operating_point: dict | None = None, max_pixels: int = MAX_PIXELS, instances: dict | None = None):
        from anomseg.instances import InstanceError, check_settings

        try:
            self.instance_settings = check_settings(instances)
        except InstanceError as exc:
            raise PipelineError(str(exc)) from None
        self._refiner = None
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except (RuntimeError, TypeError):
            raise PipelineError(f"device={device!r}: not a device; give cpu, cuda or cuda:<index>") from None
        if self.device.type == "cuda" and (not torch.cuda.is_available() or
                                           (self.device.index or 0) >= torch.cuda.device_count()):
            raise PipelineError(f"device={device!r}: no such CUDA device here ({torch.cuda.device_count()} found); "
                                f"use device cpu")
        self.model = model.to(self.device).eval()
        self.method, self.backbone = method, dict(backbone)
        if inference is not None and not isinstance(inference, dict):
            raise PipelineError(f"inference={inference!r}: give a mapping {{preset, scales, flip, amp}}")
        self.inference = check_inference_settings({**INFERENCE, **(inference or {})})
        if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
            raise PipelineError(f"max_pixels={max_pixels!r}: give a number of pixels >= 1")
        self.max_pixels = max_pixels
        problem = check_consumable(method.consumes, self.inference)
        if problem:
            raise PipelineError(f"method {method.name!r}: {problem}")
        self.operating_point = operating_point

    @classmethod
    def from_files(cls, *, backbone: str | None = None, checkpoint: str | None = None, method: str = "msp",
                   head: str | None = None, options: dict | None = None, num_classes: int | None = None,
                   inference: dict | None = None, device=None, fit_data=None,
                   max_pixels: int = MAX_PIXELS, instances: dict | None = None) -> "AnomalySegmenter":
        """Build from a backbone name and / or checkpoint and a method name (``head`` for a trained head).

        ``checkpoint`` alone is an anomseg checkpoint (it names its backbone); with ``backbone`` any
        supported format (then ``num_classes``). A fitted method (``sml``, ``kl_matching``) is fitted on
        ``fit_data``, a dataset of the sample contract (its training / validation split)."""
        spec = {"name": backbone, "options": {}, "checkpoint": checkpoint}
        model, _ = backbone_from_config(spec, num_classes)
        m = build_from_spec({"name": method, "options": options or {}, **({"head": head} if head else {})})
        seg = cls(model=model, method=m, backbone=spec, inference=inference, device=device, max_pixels=max_pixels,
                  instances=instances)
        m.setup(seg.model)
        if m.fit_split is not None:
            if fit_data is None:
                raise PipelineError(f"method {method!r} is fitted on data: pass fit_data=<its {m.fit_split} dataset>, "
                                    f"or load a pipeline file saved after fitting")
            seg.fit(fit_data)
        return seg

    # -- scoring -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images, size: tuple[int, int] | None = None) -> torch.Tensor:
        """A batch in any accepted layout (:mod:`anomseg.data.images`: uint8 or float in [0, 1], channels last or
        first) -> float32 (N, H, W) scores on the host."""
        images = as_image_batch(images, self.max_pixels).to(self.device)
        if size is None:
            size = tuple(images.shape[1:3] if images.dtype == torch.uint8 else images.shape[-2:])
        return self.method.score(self._observe(images, size)).float().cpu()

    def _observe(self, images: torch.Tensor, size: tuple[int, int]) -> Observation:
        out = predict_with(self.model, images, size, self.inference, self.method.taps(self.model))
        return Observation(out, images, self.model, size, self.inference["amp"])

    def __call__(self, image) -> np.ndarray:
        """One image (a path, a PIL image, or an array in an accepted layout, :mod:`anomseg.data.images`) ->
        float32 (H, W) scores."""
        batch = as_image_batch(image, self.max_pixels)
        if batch.shape[0] != 1:
            raise ImageInputError(f"seg(image) scores one image, got a batch of {batch.shape[0]}; use seg.predict(images)")
        return self.predict(batch)[0].numpy()

    # -- fitting and operating point -----------------------------------------------------
    def fit(self, dataset, max_images: int = 200) -> "AnomalySegmenter":
        """Fit a fitted method on up to ``max_images`` samples of ``dataset`` (semantic labels used)."""
        def batches():
            for i in range(min(len(dataset), max_images)):
                s = dataset[i]
                images = torch.from_numpy(np.array(s["image"]))[None].to(self.device)
                yield (self._observe(images, s["semantic"].shape),
                       torch.from_numpy(s["semantic"])[None].to(self.device))
        self.method.fit(batches())
        return self

    def calibrate(self, dataset, tpr: Annotated[float, Range(0, 1, lo_open=True)] | None = 0.95,
                  max_images: PositiveInt | None = None, *, fpr: Annotated[float, Range(0, 1)] | None = None,
                  best_f1: bool = False) -> dict:
        """Set the operating point from the pixels of a labelled ``dataset`` (void excluded; its anomaly pixels are
        the positives) and return it; one rule:

        * ``tpr`` (default 0.95): the highest threshold whose true-positive rate reaches ``tpr``;
        * ``fpr=``: the lowest threshold whose false-positive rate on the inlier pixels is at most ``fpr``;
        * ``best_f1=True``: the threshold of the best pixel F1 (the one SMIYC's component metrics use).

        The operating point (saved in the pipeline file, shown by ``anomseg predict`` in every panel) is
        ``{"threshold", "rule": "tpr" | "fpr" | "best_f1", "target", "images", "dataset"}`` (:meth:`set_threshold`
        sets a plain number instead). Thresholds are bin edges of a 2^11-bin-per-octave histogram (exact to
        about 0.03 % of the score)."""
        from anomseg.viz import fpr_threshold, tpr_threshold

        check_options("calibrate", AnomalySegmenter.calibrate, {"tpr": tpr, "max_images": max_images, "fpr": fpr,
                                                               "best_f1": best_f1})
        rules = [r for r, on in (("fpr", fpr is not None), ("best_f1", best_f1)) if on]
        if len(rules) > 1:
            raise PipelineError("calibrate: give one rule, tpr=, fpr= or best_f1=True, not both fpr and best_f1")
        rule = rules[0] if rules else "tpr"
        hist = ScoreHistogram(11)
        n = len(dataset) if max_images is None else min(len(dataset), max_images)
        for i in range(n):
            s = dataset[i]
            hist.update(self.predict(np.asarray(s["image"])[None], size=s["anomaly"].shape)[0].numpy(), s["anomaly"])
        _, pos, neg = hist.groups()
        if pos.sum() == 0:
            raise PipelineError(f"calibration set has no anomaly pixel in {n} images; calibrate on a labelled split")
        if rule == "tpr":
            value, target = tpr_threshold(hist, tpr), tpr
        elif rule == "fpr":
            if neg.sum() == 0:
                raise PipelineError(f"calibration set has no inlier pixel in {n} images; fpr= needs inlier pixels: "
                                    f"calibrate on a labelled split with inliers, or use tpr=")
            value, target = fpr_threshold(hist, fpr), fpr
        else:
            value, target = hist.best_f1_threshold()[0], None
        self.operating_point = {"threshold": float(value), "rule": rule, "target": target, "images": n,
                                "dataset": _dataset_name(dataset)}
        if rule == "tpr":
            self.operating_point["tpr"] = tpr  # the key pipeline files of version 1 carried
        return self.operating_point

    def set_threshold(self, value: float, note: str = "") -> dict:
        """Set the operating point to a plain number (``rule: number``); ``note`` says where it comes from."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise PipelineError(f"threshold {value!r}: give a finite number")
        self.operating_point = {"threshold": float(value), "rule": "number", "target": None, "note": str(note)}
        return self.operating_point

    def describe_operating_point(self) -> str:
        """One line for panels and reports: the threshold and how it was chosen (see :func:`describe_operating_point`)."""
        return describe_operating_point(self.operating_point)

    def threshold(self, scores, value: float | None = None) -> np.ndarray:
        """bool mask ``scores >= value`` (default: the calibrated operating point)."""
        return np.asarray(scores) >= self._threshold_value(value, "value=")

    def _threshold_value(self, value: float | None, keyword: str) -> float:
        """``value``, or the calibrated operating point's threshold when it is None."""
        if value is None:
            if not self.operating_point:
                raise PipelineError(f"no operating point: call calibrate(dataset, tpr=0.95) or pass {keyword}")
            value = self.operating_point["threshold"]
        return value

    def instances(self, image, threshold: float | None = None, void=None):
        """One image's anomaly instances (:class:`anomseg.instances.Instances`: bool masks (M, H, W), float32
        confidences (M,), highest first): connected components of its score map at ``threshold`` (default: the
        operating point), refined by SAM when the instance settings say ``refine: sam``. ``void``: bool (H, W)
        pixels no instance may take."""
        from anomseg.instances import build_refiner, image_instances

        batch = as_image_batch(image, self.max_pixels)
        if batch.shape[0] != 1:
            raise ImageInputError(f"seg.instances(image) takes one image, got a batch of {batch.shape[0]}")
        scores = self.predict(batch)[0].numpy()
        threshold = self._threshold_value(threshold, "threshold=")
        rgb = None
        if self.instance_settings["refine"] == "sam":
            if self._refiner is None:
                self._refiner = build_refiner(self.instance_settings, self.device)
            rgb = batch[0].cpu().numpy() if batch.dtype == torch.uint8 else \
                (batch[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
        return image_instances(scores, float(threshold), self.instance_settings, void=void, image=rgb,
                               refiner=self._refiner)

    # -- the pipeline file ---------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        return save_torch_atomic(path, {
            "format": PIPELINE_FORMAT, "version": PIPELINE_VERSION, "backbone": self.backbone,
            "num_classes": int(self.model.num_classes), "weights": weights_hash(self.model),
            "inference": self.inference, "method": {"name": self.method.name, "options": getattr(self.method, "options", {}),
                                                    "state": self.method.state_dict()},
            "operating_point": self.operating_point, "instances": self.instance_settings})

    @classmethod
    def load(cls, path: str | Path, checkpoint: str | None = None, device=None) -> "AnomalySegmenter":
        """Rebuild from a pipeline file; ``checkpoint`` replaces the saved backbone checkpoint path."""
        path = Path(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PipelineError(f"{path}: not a readable pipeline file ({type(exc).__name__})") from None
        if not isinstance(obj, dict) or obj.get("format") != PIPELINE_FORMAT:
            raise PipelineError(f"{path}: not an anomseg pipeline file (written by AnomalySegmenter.save)")
        missing = [k for k in PIPELINE_FIELDS if k not in obj]
        if missing or not isinstance(obj.get("method"), dict) or \
                any(k not in obj["method"] for k in ("name", "options", "state")):
            what = ", ".join(missing) if missing else "method name / options / state"
            raise PipelineError(f"{path}: pipeline file lacks {what}; save it again with AnomalySegmenter.save")
        spec = dict(obj["backbone"], **({"checkpoint": checkpoint} if checkpoint else {}))
        model, _ = backbone_from_config(spec, obj["num_classes"])
        if weights_hash(model) != obj["weights"]:
            raise PipelineError(f"{path}: the backbone built from {spec.get('checkpoint')} has weights {weights_hash(model)}, "
                                f"the pipeline was made with {obj['weights']}; give the checkpoint it was made with "
                                f"(AnomalySegmenter.load(path, checkpoint=...))")
        m = obj["method"]
        method = build_method(m["name"], **m["options"])
        try:
            method.load_state_dict(m["state"])
        except AnomsegError as exc:  # the method's own check (a head's payload) said what is wrong
            raise PipelineError(f"{path}: {exc}") from None
        except (KeyError, TypeError, RuntimeError) as exc:
            raise PipelineError(f"{path}: the state of method {m['name']!r} is incomplete or malformed "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); save it "
                                f"again with AnomalySegmenter.save") from None
        seg = cls(model=model, method=method, backbone=spec, inference=obj["inference"], device=device,
                  operating_point=obj["operating_point"], instances=obj.get("instances"))
        method.setup(seg.model)
        return seg
