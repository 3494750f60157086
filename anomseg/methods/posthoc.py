"""Post-hoc scores as methods: one registered class per function of :data:`anomseg.scores.POSTHOC`,
named as the function; options (e.g. ``temperature``) are bound at construction."""

from __future__ import annotations

import functools
import inspect

from anomseg.methods.base import Method, Observation, register_method
from anomseg.scores.posthoc import POSTHOC


class PosthocMethod(Method):
    """A function of the mean logits (or mean probabilities), no fitting."""

    function = None  # set per registered subclass

    def __init__(self, **options):
        fn = type(self).function
        inspect.signature(fn).bind(None, **options)  # an unknown option fails here (TypeError), not mid-run
        self.fn = functools.partial(fn, **options) if options else fn

    @classmethod
    def declaration(cls):
        fn = cls.function
        return fn, (next(iter(inspect.signature(fn).parameters)),)  # the logits / probabilities argument

    def score(self, obs: Observation):
        x = obs.prediction.probs if self.consumes == "probs" else obs.prediction.logits
        return self.fn(x).float()


for _name, _fn in POSTHOC.items():
    register_method(_name)(type(_name, (PosthocMethod,), {"function": staticmethod(_fn), "consumes": _fn.consumes,
                                                          "__doc__": _fn.__doc__}))
