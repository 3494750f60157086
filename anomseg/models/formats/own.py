"""Format ``anomseg``: our own checkpoints, ``{"format": "anomseg", "backbone": {name, num_classes, options},
"state_dict", "config", ...}``, written by :func:`save_checkpoint`; the file alone rebuilds its model (the
constructor arguments beside the weights, as smp's ``save_pretrained`` does)."""

from __future__ import annotations

from pathlib import Path

from anomseg.files import save_torch_atomic

NAME = "anomseg"
HEAD_KEY = None


def recognise(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == NAME


def save_checkpoint(path: str | Path, model, config: dict | None = None, **extra) -> Path:
    """Write our format: the weights, the arguments that built the model, and the config."""
    obj = {"format": NAME, "backbone": getattr(model, "build_args", None), "state_dict": model.state_dict(),
           "config": config or {}, **extra}
    return save_torch_atomic(path, obj)  # a killed save never leaves a half-written checkpoint


def convert(obj: dict) -> dict:
    return dict(obj["state_dict"])
