"""Anomalies as objects: instances from score maps, SAM refinement, and the OoDIS instance protocol.

    from anomseg.instances import instances_from_scores, InstanceAP
    inst = instances_from_scores(score, threshold=0.7, void=anomaly == 255)   # masks (M, H, W), scores (M,)
    ap = InstanceAP(); ap.add(inst, gt_ids, void); ap.compute()["AP50"]

* :mod:`~anomseg.instances.extract` - :class:`Instances`, connected components and their confidence;
* :mod:`~anomseg.instances.sam` - SAM refinement through ``transformers`` (box / point prompts);
* :mod:`~anomseg.instances.ap` - AP / AP50 as the OoDIS scoring program computes them;
* :mod:`~anomseg.instances.oodis` - the Cityscapes instance encoding, the OoDIS submission, COCO RLE.

The settings every entry point shares (the evaluation's ``instances:`` section, ``AnomalySegmenter``,
``anomseg predict``) are :data:`DEFAULTS`, checked by :func:`check_settings`.
"""

from __future__ import annotations

import copy

import numpy as np

from anomseg.instances.ap import OVERLAPS, InstanceAP
from anomseg.instances.extract import (MIN_SIZE, InstanceError, Instances, check_confidence_rule, instances_from_scores,
                                       sort_instances)

#: the instance settings: ``threshold`` tpr95 | best_f1 (the split's pixel operating points) | a number;
#: ``refine`` none | sam; ``export`` any of oodis, coco
DEFAULTS = {"threshold": "tpr95", "min_size": MIN_SIZE, "confidence": "mean", "refine": "none",
            "sam": {"model": "tiny", "prompts": "box", "multimask": False, "merge_iou": 0.5, "seed": 0},
            "export": []}
THRESHOLDS = ("tpr95", "best_f1")
EXPORTS = ("oodis", "coco")
REFINE = ("none", "sam")


def check_settings(spec: dict | None) -> dict:
    """The instance settings with their defaults, checked (one line naming the bad value and the choices)."""
    from anomseg.config import merge
    from anomseg.instances.sam import PROMPTS

    if spec is not None and not isinstance(spec, dict):
        raise InstanceError(f"instances={spec!r}: give a mapping such as {{threshold: tpr95, refine: sam}}")
    unknown = set(spec or {}) - set(DEFAULTS)
    if unknown:
        raise InstanceError(f"instances: unknown key(s) {', '.join(sorted(map(str, unknown)))}; known: {', '.join(DEFAULTS)}")
    s = merge(copy.deepcopy(DEFAULTS), copy.deepcopy(spec or {}))
    t = s["threshold"]
    if isinstance(t, bool) or not (t in THRESHOLDS or (isinstance(t, (int, float)) and np.isfinite(t))):
        raise InstanceError(f"instances.threshold={t!r}: give tpr95, best_f1 or a finite number")
    if not isinstance(s["min_size"], int) or isinstance(s["min_size"], bool) or s["min_size"] < 1:
        raise InstanceError(f"instances.min_size={s['min_size']!r}: give a whole number of pixels >= 1")
    check_confidence_rule(s["confidence"])
    if s["refine"] not in REFINE:
        raise InstanceError(f"instances.refine={s['refine']!r}: choose none or sam")
    sam = s["sam"]
    if not isinstance(sam, dict) or set(sam) - set(DEFAULTS["sam"]):
        raise InstanceError(f"instances.sam={sam!r}: keys {', '.join(DEFAULTS['sam'])}")
    if sam["prompts"] not in PROMPTS:
        raise InstanceError(f"instances.sam.prompts={sam['prompts']!r}: choose one of {', '.join(PROMPTS)}")
    if not isinstance(sam["model"], str) or not sam["model"]:
        raise InstanceError(f"instances.sam.model={sam['model']!r}: give tiny or a local transformers SAM folder")
    m = sam["merge_iou"]
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1:
        raise InstanceError(f"instances.sam.merge_iou={m!r}: give an IoU in [0, 1]")
    exports = s["export"]
    if isinstance(exports, str):
        exports = s["export"] = [exports]
    if not isinstance(exports, list) or any(e not in EXPORTS for e in exports):
        raise InstanceError(f"instances.export={s['export']!r}: give a list of {', '.join(EXPORTS)}")
    return s


def build_refiner(settings: dict, device=None):
    """The settings' :class:`~anomseg.instances.sam.SamRefiner`, or None without refinement."""
    if settings["refine"] != "sam":
        return None
    from anomseg.instances.sam import SamRefiner, load_sam

    sam = settings["sam"]
    model, processor = load_sam(sam["model"], seed=sam["seed"])
    return SamRefiner(model=model, processor=processor, prompts=sam["prompts"], multimask=sam["multimask"],
                      merge_iou=sam["merge_iou"], min_size=settings["min_size"], confidence=settings["confidence"],
                      device=device)


def image_instances(score, threshold: float, settings: dict, *, void=None, image=None, refiner=None) -> Instances:
    """One image's instances under ``settings`` (components, then SAM when a refiner is given)."""
    inst = instances_from_scores(score, threshold, void=void, min_size=settings["min_size"],
                                 confidence=settings["confidence"])
    if refiner is not None:
        if image is None:
            raise InstanceError("SAM refinement needs the image the score map belongs to")
        inst = refiner.refine(image, inst, score, void=void)
    return inst


__all__ = ["DEFAULTS", "EXPORTS", "InstanceAP", "InstanceError", "Instances", "MIN_SIZE", "OVERLAPS",
           "build_refiner", "check_settings", "image_instances", "instances_from_scores", "sort_instances"]
