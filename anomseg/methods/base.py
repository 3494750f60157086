"""The one contract every anomaly method satisfies, and the registry that builds methods by name.

A :class:`Method` declares what it ``consumes`` from the backbone (``"logits"``: the mean logits at
the label size; ``"probs"``: the mean softmax probabilities; ``"features"``: the unresized pass's
features at the backbone's stride; ``"images"``: it needs plain single-scale passes (its own, or the inference pass's inner responses
through :meth:`Method.taps`); ``"queries"``: a
mask-classification backbone's per-query class and mask logits of every pass), may be fitted
(``fit_split`` names the split role it is fitted on: ``"train"``, ``"val"``, or None for methods that
need no fitting or arrive fitted, as trained heads do), and maps an :class:`Observation` to a float32
(N, H, W) score map at the label size, higher = more anomalous.

``register_method(name)`` adds a class to :data:`METHODS`; ``build_method(name, **options)`` builds one.
A new method is one file with a registered class; evaluation, the visualizer and tuning use only
this contract.
"""

from __future__ import annotations

import abc
import difflib
from dataclasses import dataclass
from typing import Iterable

import torch

from anomseg.config import ConfigError
from anomseg.options import check_options

CONSUMES = ("logits", "probs", "features", "images", "queries")


@dataclass
class Observation:
    """What the inference step produced for a batch, as a method sees it.

    Attributes:
        prediction: a :class:`~anomseg.models.inference.Prediction` (``logits`` / ``probs`` float32
            (N, K, H, W) at the label size, ``features`` (N, D, h, w) or None).
        images: the input batch (uint8 (N, H, W, 3) or float (N, 3, H, W)), on the model's device.
        model: the backbone.
        size: (H, W) of the score maps.
        amp: the inference autocast setting (``"none"``, ``"bf16"``, ``"fp16"``).
    """

    prediction: object
    images: torch.Tensor
    model: torch.nn.Module
    size: tuple[int, int]
    amp: str = "none"


class Method(abc.ABC):
    """An anomaly method (see the module docstring). Subclasses set ``consumes`` and implement
    :meth:`score`; fitted ones set ``fit_split`` and implement :meth:`update`, :meth:`state_dict`
    and :meth:`load_state_dict`."""

    name: str = ""
    consumes: str = "logits"
    fit_split: str | None = None

    @abc.abstractmethod
    def score(self, obs: Observation) -> torch.Tensor:
        """float32 (N, H, W) on the model's device, higher = more anomalous."""

    def setup(self, model: torch.nn.Module) -> None:
        """Called once with the backbone before fitting or scoring (K classes, device, weights)."""

    def taps(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """Modules of ``model`` whose inputs this method reads from the inference pass
        (``Prediction.inputs``); the caller of :func:`~anomseg.models.inference.predict` passes them, so the
        method needs no backbone pass of its own. Default: none."""
        return []

    def update(self, obs: Observation, semantic: torch.Tensor) -> None:
        """Add a fitting batch (``semantic`` int64 (N, H, W), 255 = ignore)."""
        raise TypeError(f"method {self.name!r} is not fitted on data (fit_split is None): score with it directly")

    def fit(self, batches: Iterable[tuple[Observation, torch.Tensor]]) -> "Method":
        """Fit on a stream of (observation, semantic) batches."""
        for obs, semantic in batches:
            self.update(obs, semantic)
        return self

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def identity(self) -> dict:
        """What a fitted state depends on besides the data (e.g. a head file's digest); {} by default."""
        return {}

    @classmethod
    def declaration(cls):
        """(callable, parameters to skip) whose typed keyword parameters declare this method's options
        (:mod:`anomseg.options`); by default the constructor."""
        return cls, ()


def check_consumable(consumes: str, inference: dict) -> str | None:
    """Why inference settings (``preset``, ``scales``, ``flip``) cannot give a method what it consumes,
    or None when they can (with the fix in the message)."""
    scales = [float(s) for s in inference.get("scales", [1.0])]
    preset, flip = inference.get("preset", "none"), inference.get("flip", False)
    if inference.get("window") and consumes not in ("logits", "probs", "features"):
        return (f"it consumes {consumes}, which sliding-window inference (inference.window) does not give; evaluate it "
                f"in a run without windows")
    if consumes == "features" and (preset == "caos" or 1.0 not in scales):
        return (f"it consumes backbone features of the unresized image, but the inference settings (preset {preset}, "
                f"scales {scales}) have no scale-1.0 pass; add 1.0 to inference.scales or evaluate it in a run of its own")
    if consumes == "images" and (preset != "none" or scales != [1.0] or flip):
        return ("it runs its own single-scale passes; it cannot follow multi-scale / flip / preset inference: "
                "evaluate it in a run with the default inference")
    return None


METHODS: dict[str, type[Method]] = {}


def register_method(name: str):
    """Class decorator: make ``name`` buildable with :func:`build_method`."""
    def add(cls):
        if cls.consumes not in CONSUMES:
            raise ValueError(f"method {name!r} consumes {cls.consumes!r}; choose one of {', '.join(CONSUMES)}")
        METHODS[name] = cls
        cls.name = name
        return cls
    return add


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        near = difflib.get_close_matches(str(name), METHODS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown method {name!r}; {hint}valid: {', '.join(sorted(METHODS))} "
                          f"(a trained head: give its name and 'head: <best.pth>')") from None


def check_method_options(name: str, options: dict) -> dict:
    """A registered method's options checked against their declared types and ranges (one line each)."""
    fn, skip = method_class(name).declaration()
    return check_options(f"method {name!r}", fn, options, skip)


def build_method(name: str, **options) -> Method:
    """Build a registered method; ``options`` are checked (:func:`check_method_options`), then go to its
    constructor."""
    cls = method_class(name)
    options = check_method_options(name, options)
    try:
        method = cls(**options)
    except TypeError as exc:
        raise ConfigError(f"method {name!r}: bad option ({exc})") from None
    method.name = name
    method.options = {k: v for k, v in options.items() if k != "head"}  # what rebuilds it (pipeline files)
    return method


def spec_method_name(spec: dict) -> str:
    """The registered method a config entry ``{name, score?, head?, options?}`` names: ``score`` if
    given, else ``name``; an entry with ``head:`` whose name is not registered is the generic ``head``."""
    name = spec.get("score") or spec["name"]
    if spec.get("head") and name not in METHODS:
        return "head"
    return name


def build_from_spec(spec: dict) -> Method:
    """The method of a config entry, built from the registry (``head:`` is passed as an option)."""
    options = dict(spec.get("options", {}))
    if spec.get("head"):
        options["head"] = spec["head"]
    return build_method(spec_method_name(spec), **options)
