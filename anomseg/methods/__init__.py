"""Anomaly methods under one contract (:class:`Method`), built by name with :func:`build_method`.

Registered: every post-hoc score (``msp``, ``max_logit``, ``entropy``, ``energy``, ...), the fitted
scores ``sml`` and ``kl_matching``, ``mc_dropout``, ``cores``, and every head name (``opengan_fea``, ``cls_fea``,
``gaussian``, ...; built with ``head=<best.pth>``), and the mask-classification scores ``rba``, ``eam``,
``m2a``, ``uno`` on a Mask2Former's queries.
"""

from anomseg.methods import cores, fitted, head, masks, posthoc  # noqa: F401  (registration)
from anomseg.methods.base import (CONSUMES, METHODS, Method, Observation, build_from_spec, build_method, check_consumable,
                                  method_class, register_method, spec_method_name)

__all__ = ["Method", "Observation", "METHODS", "CONSUMES", "build_method", "build_from_spec", "check_consumable",
           "method_class", "register_method", "spec_method_name"]
