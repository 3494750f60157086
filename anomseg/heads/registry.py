"""The head registry: every head by name, its options checked, built with plain keyword arguments."""

from __future__ import annotations

from anomseg.config import ConfigError
from anomseg.options import check_options
from anomseg.heads.base import Head
from anomseg.heads.dias import DIASHead
from anomseg.heads.opengan import OpenGANHead
from anomseg.heads.pixood import PixOODHead
from anomseg.heads.uem import UEMHead
from anomseg.heads.statistical import GaussianHead, GMMHead, KNNHead

# name -> (class, fixed options); OpenGAN-0 and CLS-fea are settings of OpenGAN's trainer
# (FORMATS.md: OpenGAN-0 = no real open data, lambda_o = 0; CLS = no generator, lambda_G = 0).
HEADS = {
    "opengan_fea": (OpenGANHead, {}),
    "opengan0_fea": (OpenGANHead, {"lambda_o": 0.0}),
    "cls_fea": (OpenGANHead, {"lambda_g": 0.0}),
    "dias_fea": (DIASHead, {}),
    "gaussian": (GaussianHead, {}),
    "gmm": (GMMHead, {}),
    "knn": (KNNHead, {}),
    "uem": (UEMHead, {}),
    "pixood": (PixOODHead, {}),
}


def check_head_options(name: str, options: dict) -> dict:
    """A head's options checked against its constructor's declared types and ranges (one line each)."""
    if name not in HEADS:
        raise ConfigError(f"unknown head {name!r}; valid: {', '.join(HEADS)}")
    return check_options(f"head {name!r}", HEADS[name][0], options, skip=("feat_dim",))


def build_head(name: str, feat_dim: int, **options) -> Head:
    """Build a head by name (see :data:`HEADS`); ``gaussian``, ``dias_fea``, ``uem`` and ``pixood`` also need
    ``num_classes``."""
    if name not in HEADS:
        raise ConfigError(f"unknown head {name!r}; valid: {', '.join(HEADS)}")
    cls, fixed = HEADS[name]
    clash = {k for k in fixed if k in options and options[k] != fixed[k]}
    if clash:
        raise ConfigError(f"head {name!r} fixes {', '.join(sorted(clash))}; use 'opengan_fea' to set them freely")
    options = check_head_options(name, options)
    try:
        head = cls(feat_dim, **{**options, **fixed})
    except TypeError as exc:
        raise ConfigError(f"head {name!r}: bad option ({exc})") from None
    except ValueError as exc:  # an option that does not fit the bank (its classes, its channels)
        raise ConfigError(f"head {name!r}: {exc}") from None
    head.name = name
    return head
