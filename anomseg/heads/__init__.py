"""Per-pixel anomaly heads on backbone features: OpenGAN-fea, OpenGAN-0, CLS-fea, DIAS-fea, Gaussian, GMM, kNN;
their checkpoint I/O (:mod:`anomseg.heads.io`) and their training on a feature bank (:mod:`anomseg.heads.train`)."""

from __future__ import annotations

from anomseg.heads.base import Head
from anomseg.heads.dias import DIASHead
from anomseg.heads.opengan import Discriminator, Generator, OpenGANHead
from anomseg.heads.registry import HEADS, build_head, check_head_options
from anomseg.heads.statistical import GaussianHead, GMMHead, KNNHead
from anomseg.heads.io import HeadError, load_head, make_head, save_head

__all__ = ["build_head", "HEADS", "Head", "OpenGANHead", "Discriminator", "Generator", "GaussianHead", "GMMHead", "KNNHead", "DIASHead",
           "HeadError", "load_head", "make_head", "save_head", "check_head_options"]
