"""Trained per-pixel heads as methods: registered under every head name of :data:`anomseg.heads.HEADS`
(``opengan_fea``, ``cls_fea``, ``gaussian``, ...); built with ``head=<best.pth>`` (or a fitted
:class:`~anomseg.heads.Head`) and scored on the features of the unresized pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from anomseg.files import file_digest
from anomseg.heads import HEADS
from anomseg.heads.io import HeadError, head_from_payload, head_payload, load_head
from anomseg.methods.base import Method, Observation, register_method
from anomseg.models.base import resize_logits
from anomseg.models.inference import window_average
from anomseg.models.identity import weights_hash


class HeadMethod(Method):
    """A head read from its checkpoint (``head``: a path, a fitted :class:`~anomseg.heads.Head`, or a
    head payload from a pipeline file), checked against the backbone it scores."""

    consumes = "features"

    def __init__(self, head: Any = None):
        self.path, self.head, self.info = None, None, {}
        if isinstance(head, dict):
            self.load_state_dict({"head": head})
        elif hasattr(head, "score_map"):
            self.head = head
        elif head is not None:
            self.path = Path(head)
            self.head, self.info = load_head(self.path)

    def _check_kind(self) -> None:
        """A head file says what it is: a method named after a head kind takes only that kind."""
        kind = getattr(self.head, "name", None)
        if self.name != "head" and kind is not None and kind != self.name:
            raise HeadError(f"method {self.name!r}: head {self.path or '(payload)'} holds a {kind!r} head, not a "
                            f"{self.name!r} one; name the method {kind!r}, or give the {self.name} head's file")

    def setup(self, model):
        self._check_kind()
        if self.head is None:
            raise HeadError(f"method {self.name!r} is a trained head: give 'head: <best.pth>' "
                            f"(tools/train_head.py writes <out>/heads/{self.name}/best.pth)")
        weights = self.info.get("weights")
        if weights and weights != weights_hash(model):
            raise HeadError(f"method {self.name!r}: head {self.path or '(payload)'} was trained on other backbone "
                             f"weights ({weights}); use it with the backbone it was trained on")
        self.head.to(next(model.parameters()).device).eval()

    def score(self, obs: Observation):
        maps = self.on_grids(obs, lambda features, grid_logits: self.map_on(features, grid_logits, None)[:, None])
        return maps[:, 0]

    def map_on(self, features, grid_logits, size):
        """The head's score map on one feature grid, resized to ``size`` (None: the grid's): float32 (N, ...)."""
        if getattr(self.head, "uses_logits", False):
            return self.head.score_map(features, size=size, logits=grid_logits)
        return self.head.score_map(features, size=size)

    @staticmethod
    def on_grids(obs: Observation, maps_of) -> torch.Tensor:
        """``maps_of(features, grid_logits)`` -> (N, C, h, w) on the pass's feature grid, bilinearly resized to the
        label size; under sliding windows on each window, resized to it and averaged where windows overlap (UEM's
        rule), then to the label size: float32 (N, C, *obs.size)."""
        p = obs.prediction
        if not p.windows:
            return resize_logits(maps_of(p.features, p.grid_logits).float(), tuple(obs.size))
        image = (max(w.y + w.height for w in p.windows), max(w.x + w.width for w in p.windows))
        averaged = window_average([(w, maps_of(w.features, w.grid_logits)) for w in p.windows], image)
        return resize_logits(averaged, tuple(obs.size))

    def state_dict(self) -> dict:
        return {"head": head_payload(self.head, {k: v for k, v in self.info.items() if k not in ("format", "name",
                                                                                                  "feat_dim", "options")})}

    def load_state_dict(self, state: dict) -> None:
        self.head, self.info = head_from_payload(state["head"], source=f"the head of method {self.name!r}")

    def identity(self) -> dict:
        return {"head": file_digest(self.path)} if self.path else {}


for _name in HEADS:
    register_method(_name)(type(_name, (HeadMethod,), {"__doc__": f"The trained {_name} head."}))
register_method("head")(type("head", (HeadMethod,), {"__doc__": "Any trained head (its file names its kind)."}))


@register_method("uem")
class UEMMethod(HeadMethod):
    """UEM's likelihood ratio (``anomseg.heads.uem``), fused as the release's test_step does: the head's (inlier,
    outlier) maps and the segmenter's logits each at the label size, then s = o_1 - max_c l_c - o_0
    (NazirNayal8/UEM-likelihood-ratio ``modeling/ood_segmentation.py``)."""

    def score(self, obs: Observation):
        o = self.on_grids(obs, lambda features, _: self.head.outputs(features))  # windows: averaged as the logits are
        return o[:, 1] - obs.prediction.logits.to(o).max(1).values - o[:, 0]


@register_method("pixood")
class PixOODMethod(HeadMethod):
    """PixOOD (``anomseg.heads.pixood``) as the release evaluates it (vojirt/PixOOD ``pixood.py``): score_c maps on
    the feature grid (features and the segmenter's logits there), bilinearly resized to the label size, then
    anomaly = 1 - max_c score_c over ``eval_labels`` (default: the head's; [0, 1] = Cityscapes road and sidewalk,
    the release's road-obstacle mode)."""

    def __init__(self, head: Any = None, eval_labels: list[int] | None = None):
        super().__init__(head)
        self.eval_labels = list(eval_labels) if eval_labels else None

    def setup(self, model):
        super().setup(model)
        if self.eval_labels is not None:
            try:
                self.head.check_labels(self.eval_labels)
            except ValueError as exc:
                raise HeadError(f"method 'pixood': {exc}") from None

    def score(self, obs: Observation):
        scores = self.on_grids(obs, lambda features, grid_logits: self.head.class_scores(features, grid_logits,
                                                                                          self.eval_labels))
        return 1.0 - scores.max(1).values
