"""Loading the checkpoints users already have, and saving our own.

Formats (../shared/docs/FORMATS.md):

* ``anomseg``: ``{"format": "anomseg", "backbone": {name, num_classes, options}, "state_dict",
  "config"}``, written by :func:`save_checkpoint`;
* HRNet-Semantic-Segmentation (e.g. ``hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth``): keys
  prefixed ``model.``, a ``loss.criterion.weight`` key, sometimes wrapped as ``{"state_dict": ...}``,
  older files without ``num_batches_tracked``;
* CSAIL semantic-segmentation-pytorch (CAOS): ``encoder_epoch_N.pth`` + ``decoder_epoch_N.pth``,
  flat keys; SyncBN files carry ``_tmp_running_mean`` / ``_tmp_running_var`` / ``_running_iter``.

Files are read with ``torch.load(..., weights_only=True)``, keys remapped, and loaded strictly: a
mismatch raises :class:`ModelError` naming the missing and unexpected keys and the class count the
file was trained for.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from anomseg.models.base import SegmentationBackbone
from anomseg.models.registry import ModelError, build_backbone

FORMAT = "anomseg"
HRNET_BACKBONE_KEYS = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2", "transition2",
                       "stage3", "transition3", "stage4")
SYNCBN_EXTRA = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")
# The weight whose first dimension is the class count, per format.
HEAD_KEYS = {"hrnet": "last_layer.3.weight", "csail": "decoder.conv_last.4.weight"}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor objects
        raise ModelError(f"{path}: cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: {exc}); "
                         f"is it a PyTorch checkpoint of plain tensors?") from None


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def save_checkpoint(path: str | Path, model: SegmentationBackbone, config: dict | None = None, **extra) -> Path:
    """Write our format: the weights, the arguments that built the model, and the config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"format": FORMAT, "backbone": getattr(model, "build_args", None), "state_dict": model.state_dict(),
           "config": config or {}, **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # atomic: a killed save never leaves a half-written checkpoint
    return path


def detect_format(obj) -> str:
    """'anomseg', 'hrnet' or 'csail_encoder' / 'csail_decoder' for a loaded checkpoint object."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return "anomseg"
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ModelError("checkpoint holds no state dict")
    keys = list(sd)
    if any(k.startswith("model.") for k in keys) or "loss.criterion.weight" in keys or any(k.startswith("last_layer.") for k in keys):
        return "hrnet"
    bare = [k.removeprefix("module.") for k in keys]
    if any(k.startswith("ppm.") or k.startswith("conv_last.") for k in bare):
        return "csail_decoder"
    if any(k.startswith("layer4.") for k in bare) and "conv3.weight" in bare:
        return "csail_encoder"
    raise ModelError(f"unrecognised checkpoint layout (first keys: {keys[:4]}); expected an anomseg, "
                     f"HRNet-Semantic-Segmentation or CSAIL encoder/decoder file")


def _hrnet_state(obj: dict) -> dict:
    sd = obj.get("state_dict", obj)
    sd = _strip(_strip(sd, "module."), "model.")
    out = {}
    for k, v in sd.items():
        if k.startswith("loss."):
            continue  # loss.criterion.weight: the class weights of the training loss
        out[f"backbone.{k}" if k.split(".")[0] in HRNET_BACKBONE_KEYS else k] = v
    return out


def _csail_pair(paths) -> tuple[Path, Path]:
    if isinstance(paths, (list, tuple)):
        if len(paths) != 2:
            raise ModelError(f"a CSAIL checkpoint is an (encoder, decoder) pair; got {len(paths)} paths")
        return Path(paths[0]), Path(paths[1])
    p = Path(paths)
    if p.is_dir():
        enc = sorted(p.glob("encoder_epoch_*.pth"), key=lambda q: int(re.findall(r"\d+", q.stem)[-1]))
        if not enc:
            raise ModelError(f"{p}: no encoder_epoch_*.pth found")
        p = enc[-1]
    m = re.match(r"(encoder|decoder)(_.*\.pth)$", p.name)
    if not m:
        raise ModelError(f"{p}: CSAIL files are named encoder_epoch_N.pth / decoder_epoch_N.pth")
    enc, dec = p.with_name("encoder" + m.group(2)), p.with_name("decoder" + m.group(2))
    for q in (enc, dec):
        if not q.is_file():
            raise ModelError(f"{q}: the other half of the CSAIL encoder/decoder pair is missing")
    return enc, dec


def _csail_state(enc_obj: dict, dec_obj: dict) -> dict:
    out = {}
    for prefix, obj in (("encoder.", enc_obj), ("decoder.", dec_obj)):
        sd = _strip(obj.get("state_dict", obj), "module.")
        for k, v in sd.items():
            if k.endswith(SYNCBN_EXTRA):
                continue
            out[prefix + k] = v
    return out


def _load_strict(model: torch.nn.Module, sd: dict, source: str, head_key: str | None) -> None:
    own = model.state_dict()
    for k in own:  # older BN files lack num_batches_tracked: it carries no learned information
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros_like(own[k])
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        trained = ""
        if head_key and head_key in sd:
            trained = f"; the file was trained for {sd[head_key].shape[0]} classes, the model has {getattr(model, 'num_classes', '?')}"
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
        raise ModelError(f"{source}: does not fit {type(model).__name__}: {'; '.join(parts)}{trained}")
    model.load_state_dict(sd, strict=True)


def load_checkpoint(model: SegmentationBackbone, path_or_paths) -> dict:
    """Load a checkpoint into ``model`` strictly, auto-detecting its format.

    Args:
        path_or_paths: one file (our format, an HRNet file, or one half of a CSAIL pair whose other
            half lies beside it), an (encoder, decoder) pair, or a folder holding a CSAIL pair.
    Returns:
        ``{"format": ..., "num_classes": ..., "source": ...}`` (plus ``config`` for our format).
    """
    if isinstance(path_or_paths, (list, tuple)) or Path(path_or_paths).is_dir():
        enc, dec = _csail_pair(path_or_paths)
        objs = (_read(enc), _read(dec))
        fmt = "csail"
        source = f"{enc} + {dec}"
    else:
        path = Path(path_or_paths)
        obj = _read(path)
        fmt = detect_format(obj)
        source = str(path)
        if fmt.startswith("csail"):
            enc, dec = _csail_pair(path)
            objs, fmt, source = (_read(enc), _read(dec)), "csail", f"{enc} + {dec}"
    if fmt == "csail":
        sd = _csail_state(*objs)
    elif fmt == "hrnet":
        sd = _hrnet_state(obj)
    else:
        sd = dict(obj["state_dict"])
    _load_strict(model, sd, source, HEAD_KEYS.get(fmt))
    info = {"format": fmt, "num_classes": getattr(model, "num_classes", None), "source": source}
    if fmt == "anomseg":
        info["config"] = obj.get("config", {})
        info["backbone"] = obj.get("backbone")
    return info


def build_from_checkpoint(path: str | Path) -> tuple[SegmentationBackbone, dict]:
    """Rebuild a model saved by :func:`save_checkpoint` and load its weights."""
    obj = _read(Path(path))
    if detect_format(obj) != "anomseg" or not obj.get("backbone"):
        raise ModelError(f"{path}: not an anomseg checkpoint; build the backbone yourself and call load_checkpoint")
    args = obj["backbone"]
    model = build_backbone(args["name"], args["num_classes"], **args.get("options", {}))
    return model, load_checkpoint(model, path)


def backbone_from_config(b: dict, num_classes: int):
    """The backbone a config section names: ``{checkpoint}`` alone (an anomseg checkpoint), or
    ``{name, options, checkpoint}`` with a checkpoint in any supported format. Returns (model, name)."""
    if b.get("checkpoint") and not b.get("name"):
        model, info = build_from_checkpoint(b["checkpoint"])
        return model, info["backbone"]["name"]
    if not b.get("name"):
        raise ModelError("backbone.name or backbone.checkpoint (an anomseg checkpoint) must be given")
    model = build_backbone(b["name"], num_classes, **b.get("options", {}))
    if b.get("checkpoint"):
        load_checkpoint(model, b["checkpoint"])
    return model, b["name"]
