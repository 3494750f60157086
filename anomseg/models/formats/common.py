"""What every checkpoint format shares: reading a file of plain tensors, the state dict inside it, and the
strict load whose error names what is missing, left over or of another shape."""

from __future__ import annotations

from pathlib import Path

import torch

from anomseg.models.registry import ModelError


def read_tensors(path: Path) -> dict:
    """A ``.safetensors`` file, or any file ``torch.load(weights_only=True)`` reads: plain tensors and
    containers only (a pickled object is refused, never run)."""
    if path.suffix == ".safetensors":  # a transformers release's weights file
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelError(f"{path}: cannot be read as safetensors ({type(exc).__name__}: {str(exc)[:120]})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor objects: never executed
        text = str(exc).strip()
        hint = "it holds pickled objects, not only tensors (refused, never run)" if "weights_only" in text or \
            "Unpickl" in text else (text.splitlines()[0][:120] if text else "unreadable")
        raise ModelError(f"{path}: cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: {hint}); "
                         f"is it a PyTorch checkpoint of plain tensors?") from None


def strip(sd: dict, prefix: str) -> dict:
    """``sd`` with ``prefix`` removed from the keys that start with it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def state_of(obj):
    """The state dict inside a loaded file: ``state_dict``, detectron2's ``model``, or the file itself."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("model"), dict):  # detectron2 Checkpointer: {"model": state_dict, "iteration", ...}
        return obj["model"]
    return obj.get("state_dict", obj)


def mismatch(own: dict, sd: dict) -> tuple[list, list, list]:
    """(missing, unexpected, shape mismatches) of ``sd`` against ``own``; fills the absent
    ``num_batches_tracked`` buffers of older BN files (they carry no learned information) in place."""
    for k in own:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros_like(own[k])
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def load_strict(model: torch.nn.Module, sd: dict, source: str, head_key: str | None) -> None:
    """``model.load_state_dict(sd, strict=True)``, or one :class:`ModelError` naming the missing and unexpected
    keys, the shape mismatches, and (``head_key``: the weight whose rows are the classes) the class count the
    file was trained for."""
    missing, unexpected, shapes = mismatch(model.state_dict(), sd)
    if missing or unexpected or shapes:
        trained = ""
        if head_key and head_key in sd:
            rows = sd[head_key].shape[0]
            trained = f"; the file was trained for {rows} classes, the model has {getattr(model, 'num_classes', '?')}"
            if head_key == "net.class_predictor.weight":  # K + 1 rows: the known classes and "no object"
                trained = (f"; the file's class head has {rows} rows (K + 1 with 'no object'), the model's "
                           f"{model.state_dict()[head_key].shape[0]}: check num_classes, negative_class, preset")
        raise ModelError(f"{source}: does not fit {type(model).__name__}: {mismatch_text(missing, unexpected, shapes)}"
                         f"{trained}")
    model.load_state_dict(sd, strict=True)


def mismatch_text(missing: list, unexpected: list, shapes: list, extra: str = "unexpected keys") -> str:
    """'n missing keys (a, b, ...); n <extra> (...); n shape mismatches (...)': the parts that are not empty."""
    def some(keys, n):
        return f"{', '.join(keys[:n])}{', ...' if len(keys) > n else ''}"

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({some(missing, 5)})")
    if unexpected:
        parts.append(f"{len(unexpected)} {extra} ({some(unexpected, 5)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
    return "; ".join(parts)


def mask2former_net(model, source: str):
    """The ``transformers`` Mask2Former inside our ``mask2former`` backbone; any other backbone is refused."""
    net = getattr(model, "net", None)
    if not getattr(model, "mask_classification", False) or net is None:
        raise ModelError(f"{source}: a Mask2Former checkpoint; build the backbone as name 'mask2former' (with the preset "
                         f"it was trained with) to load it, not {type(model).__name__}")
    return net
