"""Fitted scores and MC dropout as methods: ``sml`` (fitted on training pixels), ``kl_matching``
(validation pixels), ``mc_dropout`` (its own stochastic passes)."""

from __future__ import annotations

from anomseg.config import ConfigError
from anomseg.methods.base import Method, Observation, register_method
from anomseg.models.inference import autocast
from anomseg.options import PositiveInt
from anomseg.scores.fitted import KLMatching, StandardizedMaxLogit, mc_dropout


class _FittedLogitScore(Method):
    consumes = "logits"
    scorer_class = None

    def __init__(self, **options):
        self.options = options
        self.scorer = None

    @classmethod
    def declaration(cls):
        return cls.scorer_class, ("num_classes",)

    def setup(self, model):
        if self.scorer is None:  # fitted on the backbone's K classes
            self.scorer = type(self).scorer_class(model.num_classes, **self.options)
        elif self.scorer.num_classes != model.num_classes:
            raise ValueError(f"method {self.name!r} was fitted for {self.scorer.num_classes} classes; the backbone "
                             f"predicts {model.num_classes}; refit it on this backbone's data")

    def update(self, obs: Observation, semantic):
        self.scorer.update(obs.prediction.logits, semantic)

    def fit(self, batches):
        super().fit(batches)
        if float(self.scorer.count.sum()) == 0:
            raise ConfigError(f"method {self.name!r}: the fit data held no closed-set pixel (every label 255); fit it on "
                              f"the labelled split of the dataset the backbone was trained on")
        return self

    def score(self, obs: Observation):
        return self.scorer(obs.prediction.logits).float()

    def state_dict(self) -> dict:
        return self.scorer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scorer is None:
            self.scorer = type(self).scorer_class(len(state["count"]), **self.options)
        self.scorer.load_state_dict(state)


@register_method("sml")
class SML(_FittedLogitScore):
    """Standardized max logit (Jung et al., ICCV 2021), fitted on training pixels."""

    scorer_class = StandardizedMaxLogit
    fit_split = "train"


@register_method("kl_matching")
class KLMatchingMethod(_FittedLogitScore):
    """KL matching (Hendrycks et al., ICML 2022), templates from validation pixels."""

    scorer_class = KLMatching
    fit_split = "val"


@register_method("mc_dropout")
class MCDropout(Method):
    """Entropy of the mean softmax over ``passes`` stochastic passes with dropout active."""

    consumes = "images"

    def __init__(self, passes: PositiveInt = 8):
        self.passes = int(passes)

    def score(self, obs: Observation):
        with autocast(obs.images.device, obs.amp):
            return mc_dropout(obs.model, obs.images, passes=self.passes, size=obs.size).float()
