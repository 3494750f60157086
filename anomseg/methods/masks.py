"""The mask-classification methods (the SegmentMeIfYouCan leaders), on a Mask2Former's queries.

Registered: ``rba``, ``eam``, ``m2a``, ``uno`` (formulas and sources: :mod:`anomseg.scores.masks`). They
consume ``"queries"``: the :class:`~anomseg.models.base.MaskQueries` of every inference pass. Each pass is
scored at the label size (mask logits upsampled to the padded input, cropped, resized, then sigmoid) and
the passes' maps are averaged, a flipped pass flipped back first: with ``inference.flip: true`` this is
Mask2Anomaly's flip average (``anomaly_utils/anomaly_inference.py``: the refined scores of the image and
of its left-right mirror, the latter mirrored back, averaged). A backbone without queries (HRNet, PSPNet,
smp) is refused in one line when the method is set up.
"""

from __future__ import annotations

import abc
from typing import Annotated

import torch

from anomseg.config import ConfigError
from anomseg.methods.base import Method, Observation, register_method
from anomseg.options import NonNegativeInt, Range
from anomseg.scores import masks


class QueryMethod(Method):
    """A function of one pass's queries at the label size; the passes averaged (flipped ones flipped back)."""

    consumes = "queries"
    needs_negative_class = False

    def setup(self, model):
        if not getattr(model, "mask_classification", False):
            raise ConfigError(f"method {self.name!r} scores a mask-classification network's queries; backbone "
                              f"{type(model).__name__} has none: use backbone name 'mask2former'")
        negative = bool(getattr(model, "negative_class", False))
        if negative != self.needs_negative_class:
            want = "a K + 2-class head (backbone option negative_class: true, trained as configs/seg_synthetic_m2f_uno.yaml)" \
                if self.needs_negative_class else "a K + 1-class head (negative_class: false); score that model with uno"
            raise ConfigError(f"method {self.name!r} needs {want}")
        if self.needs_negative_class and getattr(model, "negative_row_untrained", False):
            raise ConfigError(f"method {self.name!r}: the checkpoint has no trained negative class (a K + 1-class file, "
                              f"its negative row added as zeros at load); fine-tune it with train_seg loss uno "
                              f"(configs/seg_synthetic_m2f_uno.yaml) and score that checkpoint")

    @abc.abstractmethod
    def score_pass(self, queries, size) -> torch.Tensor:
        """float32 (N, H, W) of one pass's :class:`~anomseg.models.base.MaskQueries` at ``size``."""

    def score(self, obs: Observation) -> torch.Tensor:
        passes = obs.prediction.queries
        if not passes:
            raise ConfigError(f"method {self.name!r}: the prediction carries no mask queries (backbone without queries)")
        total = None
        for q, flipped in passes:
            s = self.score_pass(q, obs.size)
            s = s.flip(-1) if flipped else s
            total = s if total is None else total + s
        return (total / len(passes)).float()


@register_method("rba")
class RbA(QueryMethod):
    """Rejected by All (Nayal et al., ICCV 2023): -sum_c tanh(S_c) of the semantic aggregate."""

    def score_pass(self, queries, size):
        return masks.rba(queries, size)


@register_method("eam")
class EAM(QueryMethod):
    """Ensemble over anomaly masks (Grcic et al.): 1 - sum_q sigmoid(m_q) max_{c<K} p_q(c)."""

    def score_pass(self, queries, size):
        return masks.eam(queries, size)


@register_method("uno")
class UNO(QueryMethod):
    """UNO (Delic et al.) on a head with a negative class: sum_q sigmoid(m_q) (p_q(neg) - max_{c<K} p_q(c))."""

    needs_negative_class = True

    def score_pass(self, queries, size):
        return masks.uno(queries, size)


@register_method("m2a")
class Mask2Anomaly(QueryMethod):
    """Mask2Anomaly (Rai et al., ICCV 2023): 1 - max_c S_c with its mask refinement
    (:func:`anomseg.scores.masks.mask2anomaly`); its flip average is ``inference.flip: true``.

    Args:
        confidence: a query is a refinement mask when its top class probability exceeds this (0.95).
        refine_classes: the known classes whose confident masks zero the score (Cityscapes train ids
            2..10, building .. sky, in the release; give your dataset's stuff classes).
    """

    def __init__(self, confidence: Annotated[float, Range(0, 1)] = 0.95,
                 refine_classes: list[NonNegativeInt] = tuple(range(2, 11))):
        self.confidence, self.refine_classes = float(confidence), tuple(int(c) for c in refine_classes)

    def setup(self, model):
        super().setup(model)
        bad = [c for c in self.refine_classes if c >= model.num_classes]
        if bad:
            raise ConfigError(f"method 'm2a': refine_classes {bad} are not among the backbone's {model.num_classes} "
                              f"classes; give the ids of its stuff classes")

    def score_pass(self, queries, size):
        return masks.mask2anomaly(queries, size, self.confidence, self.refine_classes)
