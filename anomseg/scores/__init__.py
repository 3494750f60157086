"""Pixel anomaly scores: float32 (N, H, W), higher = more anomalous, from logits (N, K, H, W).

Post-hoc: :func:`msp`, :func:`max_logit`, :func:`entropy`, :func:`energy`, :func:`background`,
:func:`gen`. Fitted: :class:`StandardizedMaxLogit`, :class:`KLMatching`. Sampling:
:func:`mc_dropout`. :func:`build_score` makes any of them by name.
"""

from anomseg.scores.fitted import KLMatching, StandardizedMaxLogit, mc_dropout
from anomseg.scores.posthoc import (POSTHOC, background, energy, entropy, gen, logit_norm, max_double_softmax, max_logit,
                                    max_mean_prob, msp, neg_mean_prob0)

FITTED = {"sml": StandardizedMaxLogit, "kl_matching": KLMatching}
SCORE_NAMES = tuple(POSTHOC) + tuple(FITTED) + ("mc_dropout",)


def build_score(name: str, num_classes: int | None = None, **options):
    """A score by name: a function of logits (post-hoc, options bound) or a fitted scorer."""
    import functools

    if name in POSTHOC:
        if not options:
            return POSTHOC[name]
        fn = functools.partial(POSTHOC[name], **options)
        fn.consumes = POSTHOC[name].consumes
        return fn
    if name in FITTED:
        if num_classes is None:
            raise ValueError(f"score {name!r} needs num_classes")
        return FITTED[name](num_classes, **options)
    raise ValueError(f"unknown score {name!r}; valid: {', '.join(SCORE_NAMES)}")


__all__ = ["msp", "max_logit", "entropy", "energy", "background", "gen", "logit_norm", "max_mean_prob",
           "max_double_softmax", "neg_mean_prob0", "StandardizedMaxLogit", "KLMatching",
           "mc_dropout", "build_score", "POSTHOC", "FITTED", "SCORE_NAMES"]
