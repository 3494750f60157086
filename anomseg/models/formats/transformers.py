"""Format ``mask2former_transformers``: a ``facebook/mask2former-swin-*-cityscapes-semantic`` release, as a folder
(``config.json`` + weights, read with ``from_pretrained`` on the local path, never the hub) or its weights file
(``model.safetensors`` / ``pytorch_model.bin``: keys ``model.pixel_level_module.*``, ``class_predictor.*``).

The hub files keep transformers 4.x names (``encoder.embeddings``, ``attention.self.query`` ...): a file whose
names are not the installed model's is read through ``from_pretrained`` from a temporary folder, so
transformers applies its own renaming. Refused in one line: any key ``from_pretrained`` had to leave at its
initialisation, drop or reshape; a non-Mask2Former backbone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from anomseg.models.formats.common import load_strict, mask2former_net
from anomseg.models.registry import ModelError

NAME = "mask2former_transformers"
HEAD_KEY = "net.class_predictor.weight"


def recognise(sd: dict) -> bool:
    return any(k.startswith("model.pixel_level_module.") for k in sd) or "class_predictor.weight" in sd


def recognise_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def convert(model, sd: dict, source: str) -> dict:
    """The file's state dict under our model's names (``net.`` + transformers')."""
    net = mask2former_net(model, source)
    if set(sd) != set(net.state_dict()):  # the release files' names (transformers renames them on load)
        sd = _through_from_pretrained(net, sd, source)
    return {"net." + k: v for k, v in sd.items()}


def load_folder(model, folder: Path) -> dict:
    """Load a release folder strictly into ``model``; returns the load info."""
    net = mask2former_net(model, str(folder))
    released = _from_pretrained_strict(type(net), folder, str(folder))
    sd = {"net." + k: v for k, v in released.state_dict().items()}
    load_strict(model, sd, str(folder), HEAD_KEY)
    return {"format": NAME, "num_classes": model.num_classes, "source": str(folder), "bn": None}


def _through_from_pretrained(net, sd: dict, source: str) -> dict:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        net.config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(Path(tmp) / "model.safetensors"))
        return _from_pretrained_strict(type(net), tmp, source).state_dict()


def _from_pretrained_strict(cls, folder, source: str):
    """``cls.from_pretrained(folder)`` offline, refusing any key it had to leave at its initialisation or drop."""
    try:
        net, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except Exception as exc:
        raise ModelError(f"{source}: transformers cannot read it as a Mask2Former ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160]})") from None
    problems = [f"{len(info[k])} {what} ({', '.join(sorted(map(str, info[k]))[:4])})"
                for k, what in (("missing_keys", "missing keys"), ("unexpected_keys", "unexpected keys"),
                                ("mismatched_keys", "shape mismatches")) if info.get(k)]
    if problems:
        raise ModelError(f"{source}: does not fit this Mask2Former: {'; '.join(problems)}")
    return net
