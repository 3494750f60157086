"""Loading the checkpoints users already have, and saving our own.

Formats (../shared/docs/FORMATS.md):

* ``anomseg``: ``{"format": "anomseg", "backbone": {name, num_classes, options}, "state_dict",
  "config"}``, written by :func:`save_checkpoint`;
* HRNet-Semantic-Segmentation (e.g. ``hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth``): keys
  prefixed ``model.``, a ``loss.criterion.weight`` key, sometimes wrapped as ``{"state_dict": ...}``;
  master-branch files (no ``num_batches_tracked``) were trained with InPlaceABN, whose affine step is
  ``(|gamma| + eps) * x_hat + beta`` (eps 1e-5): :func:`load_checkpoint` converts their BN weights to
  ``|gamma| + eps`` (``bn="auto"`` detects them; ``"inplace_abn"`` / ``"batchnorm"`` force a choice);
* CSAIL semantic-segmentation-pytorch (CAOS): ``encoder_epoch_N.pth`` + ``decoder_epoch_N.pth``,
  flat keys; SyncBN files carry ``_tmp_running_mean`` / ``_tmp_running_var`` / ``_running_iter``;
* Mask2Former (the ``mask2former`` backbone): a ``facebook/mask2former-swin-*-cityscapes-semantic``
  release folder (``from_pretrained`` on the local path) or its weights file (transformers keys
  ``model.pixel_level_module.*`` ...), or a detectron2-layout file (RbA's ``model_final.pth``:
  ``{"model": state_dict}``, or the official model zoo's ``model_final_*.pkl`` of numpy arrays, unpickled
  allowing arrays only; keys ``backbone.*`` / ``sem_seg_head.*``), converted by
  :mod:`anomseg.models.mask2former_keys`.

ImageNet initialisation for training (:func:`load_pretrained`): HRNet-Image-Classification's
``hrnetv2_w48_imagenet_pretrained.pth`` (the backbone keys plus a classification head that is
dropped) and CSAIL's ``resnet101-imagenet.pth`` (the deep-stem ResNet-101 plus ``fc``, dropped).

Files are read with ``torch.load(..., weights_only=True)``, keys remapped, and loaded strictly: a
mismatch raises :class:`ModelError` naming the missing and unexpected keys and the class count the
file was trained for.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from anomseg.errors import AnomsegError
from anomseg.files import save_torch_atomic
from anomseg.models.base import SegmentationBackbone
from anomseg.models.mask2former_keys import convert_detectron2, is_detectron2_layout, is_transformers_layout
from anomseg.models.registry import ModelError, build_backbone

log = logging.getLogger(__name__)

FORMAT = "anomseg"
BN_MODES = ("auto", "inplace_abn", "batchnorm")
INPLACE_ABN_EPS = 1e-5  # InPlaceABNSync's default eps (HRNet-Semantic-Segmentation master, FORMATS.md)
SYNCBN_EXTRA = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")
# The weight whose first dimension is the class count, per format.
HEAD_KEYS = {"hrnet": "last_layer.3.weight", "csail": "decoder.conv_last.4.weight",
             "mask2former_transformers": "net.class_predictor.weight", "mask2former_detectron2": "net.class_predictor.weight"}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    if path.suffix == ".pkl":  # detectron2's model zoo: a plain pickle of numpy arrays
        return read_detectron2_pickle(path)
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


# What a detectron2 model-zoo pickle may name: numpy arrays, dtypes and scalars, an OrderedDict, and
# _codecs.encode (protocol-2 pickles write bytes through it); no other callable is ever imported (a pickle
# naming one is refused before anything runs).
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                   ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which is not a numpy array")


def read_detectron2_pickle(path: Path) -> dict:
    """A detectron2 ``.pkl`` checkpoint (the official Mask2Former model zoo's ``model_final_*.pkl``:
    ``{"model": {name: numpy array}, "__author__": ...}``, read by detectron2's Checkpointer with
    ``pickle.load(f, encoding="latin1")``), unpickled allowing numpy arrays only, as tensors."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise ModelError(f"{path}: not a detectron2 checkpoint of numpy arrays ({type(exc).__name__}: "
                         f"{str(exc)[:120]}); refused, never run") from None
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, np.ndarray) for v in sd.values()):
        raise ModelError(f"{path}: a pickle without a {{name: numpy array}} model; expected a detectron2 model-zoo file")
    return {"model": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}}


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def save_checkpoint(path: str | Path, model: SegmentationBackbone, config: dict | None = None, **extra) -> Path:
    """Write our format: the weights, the arguments that built the model, and the config."""
    obj = {"format": FORMAT, "backbone": getattr(model, "build_args", None), "state_dict": model.state_dict(),
           "config": config or {}, **extra}
    return save_torch_atomic(path, obj)  # a killed save never leaves a half-written checkpoint


def _state_of(obj):
    """The state dict inside a loaded file: ``state_dict``, detectron2's ``model``, or the file itself."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("model"), dict):  # detectron2 Checkpointer: {"model": state_dict, "iteration", ...}
        return obj["model"]
    return obj.get("state_dict", obj)


def detect_format(obj) -> str:
    """'anomseg', 'hrnet', 'csail_encoder' / 'csail_decoder', 'mask2former_detectron2' or
    'mask2former_transformers' for a loaded checkpoint object."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return "anomseg"
    sd = _state_of(obj)
    if not isinstance(sd, dict):
        raise ModelError("checkpoint holds no state dict")
    keys = list(sd)
    if is_detectron2_layout(sd):
        return "mask2former_detectron2"
    if is_transformers_layout(sd):
        return "mask2former_transformers"
    if any(k.startswith("model.") for k in keys) or "loss.criterion.weight" in keys or any(k.startswith("last_layer.") for k in keys):
        return "hrnet"
    bare = [k.removeprefix("module.") for k in keys]
    if any(k.startswith("ppm.") or k.startswith("conv_last.") for k in bare):
        return "csail_decoder"
    if any(k.startswith("layer4.") for k in bare) and "conv3.weight" in bare:
        return "csail_encoder"
    raise ModelError(f"unrecognised checkpoint layout (first keys: {keys[:4]}); expected an anomseg, "
                     f"HRNet-Semantic-Segmentation, CSAIL encoder/decoder or Mask2Former (detectron2 / transformers) file")


def _hrnet_state(obj: dict) -> dict:
    sd = obj.get("state_dict", obj)
    sd = _strip(_strip(sd, "module."), "model.")
    # loss.criterion.weight: the class weights of the training loss, not part of the network
    return {k: v for k, v in sd.items() if not k.startswith("loss.")}


def _bn_prefixes(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def convert_inplace_abn(sd: dict, model: torch.nn.Module) -> int:
    """Turn InPlaceABN affine weights into BatchNorm ones in place: ``weight := |gamma| + eps``.

    InPlaceABN computes ``(x - mean) / sqrt(var + eps) * (|gamma| + eps) + beta`` (FORMATS.md), so this
    makes a plain BatchNorm2d compute the same. Returns the number of BN layers converted.
    """
    n = 0
    for prefix in _bn_prefixes(model):
        key = f"{prefix}.weight"
        if key in sd:
            sd[key] = sd[key].abs() + INPLACE_ABN_EPS
            n += 1
    return n


def _resolve_bn(bn: str, sd: dict, source: str) -> str:
    if bn not in BN_MODES:
        raise ModelError(f"bn={bn!r}: choose one of {', '.join(BN_MODES)}")
    if bn != "auto":
        return bn
    # Master-branch files (PyTorch 0.4.1, InPlaceABNSync) have no num_batches_tracked key at all;
    # pytorch-v1.1 files (nn.BatchNorm2d / SyncBatchNorm) have one per BN layer.
    return "batchnorm" if any(k.endswith("num_batches_tracked") for k in sd) else "inplace_abn"


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


def _mismatch(own: dict, sd: dict) -> tuple[list, list, list]:
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


def _load_strict(model: torch.nn.Module, sd: dict, source: str, head_key: str | None) -> None:
    missing, unexpected, shapes = _mismatch(model.state_dict(), sd)
    if missing or unexpected or shapes:
        trained = ""
        if head_key and head_key in sd:
            rows = sd[head_key].shape[0]
            trained = f"; the file was trained for {rows} classes, the model has {getattr(model, 'num_classes', '?')}"
            if head_key == "net.class_predictor.weight":  # K + 1 rows: the known classes and "no object"
                trained = (f"; the file's class head has {rows} rows (K + 1 with 'no object'), the model's "
                           f"{model.state_dict()[head_key].shape[0]}: check num_classes, negative_class, preset")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
        raise ModelError(f"{source}: does not fit {type(model).__name__}: {'; '.join(parts)}{trained}")
    model.load_state_dict(sd, strict=True)


def load_checkpoint(model: SegmentationBackbone, path_or_paths, bn: str = "auto") -> dict:
    """Load a checkpoint into ``model`` strictly, auto-detecting its format.

    Args:
        path_or_paths: one file (our format, an HRNet file, or one half of a CSAIL pair whose other
            half lies beside it), an (encoder, decoder) pair, or a folder holding a CSAIL pair.
        bn: HRNet files only: ``"auto"`` (no ``num_batches_tracked`` key = a master-branch InPlaceABN
            file), ``"inplace_abn"`` (convert BN weights to ``|gamma| + eps``) or ``"batchnorm"``.
    Returns:
        ``{"format": ..., "num_classes": ..., "source": ..., "bn": ...}`` (plus ``config`` for our
        format); ``bn`` says which normalisation the file was read as (None for non-HRNet files).
    """
    if bn not in BN_MODES:
        raise ModelError(f"bn={bn!r}: choose one of {', '.join(BN_MODES)}")
    if not isinstance(path_or_paths, (list, tuple)) and (Path(path_or_paths) / "config.json").is_file():
        return _load_transformers_folder(model, Path(path_or_paths))
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
    bn_mode = None
    if fmt == "csail":
        sd = _csail_state(*objs)
    elif fmt == "hrnet":
        sd = _hrnet_state(obj)
        bn_mode = _resolve_bn(bn, sd, source)
        if bn_mode == "inplace_abn":
            n = convert_inplace_abn(sd, model)
            log.warning("%s: read as an InPlaceABN file (%s): %d BN weights converted to |gamma| + %g", source,
                        "no num_batches_tracked keys" if bn == "auto" else "bn=inplace_abn", n, INPLACE_ABN_EPS)
        else:
            log.info("%s: read as a BatchNorm file (%s)", source, "has num_batches_tracked" if bn == "auto" else "bn=batchnorm")
    elif fmt.startswith("mask2former"):
        sd = _mask2former_state(model, _state_of(obj), fmt, source)
    else:
        sd = dict(obj["state_dict"])
    if getattr(model, "negative_class", False):
        sd = grow_negative_class(sd, model, source)
    _load_strict(model, sd, source, HEAD_KEYS.get(fmt))
    info = {"format": fmt, "num_classes": getattr(model, "num_classes", None), "source": source, "bn": bn_mode}
    if fmt == "anomseg":
        info["config"] = obj.get("config", {})
        info["backbone"] = obj.get("backbone")
    return info


def _mask2former_net(model, source: str):
    net = getattr(model, "net", None)
    if not getattr(model, "mask_classification", False) or net is None:
        raise ModelError(f"{source}: a Mask2Former checkpoint; build the backbone as name 'mask2former' (with the preset "
                         f"it was trained with) to load it, not {type(model).__name__}")
    return net


def _mask2former_state(model, sd: dict, fmt: str, source: str) -> dict:
    """A detectron2 or transformers Mask2Former state dict under our model's names (``net.`` + transformers')."""
    net = _mask2former_net(model, source)
    if fmt == "mask2former_detectron2":
        try:
            sd = convert_detectron2(sd, net, source)
        except AnomsegError as exc:
            raise ModelError(str(exc)) from None
        log.info("%s: detectron2 Mask2Former layout, %d tensors mapped to transformers' names", source, len(sd))
    elif set(sd) != set(net.state_dict()):  # the release files' names (transformers renames them on load)
        sd = _through_from_pretrained(net, sd, source)
    return {"net." + k: v for k, v in sd.items()}


def _through_from_pretrained(net, sd: dict, source: str) -> dict:
    """A transformers weights file whose names are another transformers release's (the hub files keep the 4.x
    names: ``encoder.embeddings``, ``attention.self.query`` ...): read by ``from_pretrained`` from a temporary
    folder holding our config and these tensors, so transformers applies its own renaming."""
    import tempfile

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


def grow_negative_class(sd: dict, model, source: str) -> dict:
    """A K + 1-class Mask2Former file for a model with UNO's K + 2-class head: the negative class's row is
    inserted before "no object", zero weight and bias, and its no-object loss weight 1
    (matejgrcic/Open-set-M2F ``finetune_UNO.py``); a K + 2-class file is returned as it is."""
    key = "net.class_predictor.weight"
    if key not in sd or sd[key].shape[0] != model.num_classes + 1:
        return sd
    sd = dict(sd)
    for name in (key, "net.class_predictor.bias"):
        w = sd[name]
        sd[name] = torch.cat([w[:-1], torch.zeros_like(w[:1]), w[-1:]])
    e = sd.get("net.criterion.empty_weight")
    if e is not None:
        sd["net.criterion.empty_weight"] = torch.cat([e[:-1], torch.ones_like(e[:1]), e[-1:]])
    log.info("%s: K + 1-class head grown to UNO's K + 2 (a zero row for the negative class)", source)
    return sd


def _load_transformers_folder(model, folder: Path) -> dict:
    """A ``facebook/mask2former-swin-*`` release folder (config.json + weights), read with ``from_pretrained``
    on the local path (``local_files_only``: never the hub), then loaded strictly into ``model``."""
    net = _mask2former_net(model, str(folder))
    released = _from_pretrained_strict(type(net), folder, str(folder))
    sd = {"net." + k: v for k, v in released.state_dict().items()}
    _load_strict(model, sd, str(folder), HEAD_KEYS["mask2former_transformers"])
    return {"format": "mask2former_transformers", "num_classes": model.num_classes, "source": str(folder), "bn": None}


# ImageNet files for training initialisation: what to drop, and where the rest goes in our model.
PRETRAINED = {
    # HRNet/HRNet-Image-Classification (hrnetv2_w48_imagenet_pretrained.pth): the backbone keys of the
    # segmentation network plus a classification head (lib/models/cls_hrnet.py)
    "hrnet_w48": {"drop": ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier."), "prefix": "",
                  "part": lambda k: not k.startswith("last_layer."),
                  "file": "hrnetv2_w48_imagenet_pretrained.pth (HRNet-Image-Classification)"},
    # CSAILVision/semantic-segmentation-pytorch (resnet101-imagenet.pth): the deep-stem ResNet-101 + fc
    "pspnet_r101": {"drop": ("fc.",), "prefix": "encoder.", "part": lambda k: k.startswith("encoder."),
                    "file": "resnet101-imagenet.pth (CSAIL semantic-segmentation-pytorch pretrained_resnet)"},
}


def load_pretrained(model: SegmentationBackbone, name: str, path: str | Path) -> dict:
    """Initialise the backbone part of ``model`` (built as ``name``) from an ImageNet classification file.

    Strict on the backbone part: every backbone tensor must come from the file with its shape, and
    the file may hold nothing else but the classification head (dropped). The segmentation head
    keeps its initialisation. Returns ``{"loaded": n, "dropped": m, "source": path}``.
    """
    if name not in PRETRAINED:
        raise ModelError(f"model.pretrained: no ImageNet initialisation is defined for backbone {name!r} "
                         f"(defined for {', '.join(PRETRAINED)}); smp models take encoder_weights in model.options")
    spec, path = PRETRAINED[name], Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ImageNet file not found; download {spec['file']} and set model.pretrained to it")
    obj = _read(path)
    sd = _strip(obj.get("state_dict", obj) if isinstance(obj, dict) else {}, "module.")
    kept = {spec["prefix"] + k: v for k, v in sd.items() if not k.startswith(spec["drop"]) and not k.endswith(SYNCBN_EXTRA)}
    dropped = len(sd) - len(kept)
    own = {k: v for k, v in model.state_dict().items() if spec["part"](k)}
    missing, unexpected, shapes = _mismatch(own, kept)
    if missing or unexpected or shapes:
        raise ModelError(f"{path}: not an ImageNet {name} file ({len(missing)} missing keys {missing[:3]}, "
                         f"{len(unexpected)} unexpected {unexpected[:3]}, {len(shapes)} shape mismatches {shapes[:2]}); "
                         f"expected {spec['file']}")
    model.load_state_dict(kept, strict=False)
    log.info("%s: ImageNet initialisation of %s (%d tensors, %d head tensors dropped)", path, name, len(kept), dropped)
    return {"loaded": len(kept), "dropped": dropped, "source": str(path)}


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
    if b.get("bn", "auto") not in BN_MODES:  # checked whatever the file turns out to be
        raise ModelError(f"backbone.bn={b['bn']!r}: choose one of {', '.join(BN_MODES)} (it applies to HRNet files)")
    if b.get("checkpoint") and not b.get("name"):
        model, info = build_from_checkpoint(b["checkpoint"])
        return model, info["backbone"]["name"]
    if not b.get("name"):
        raise ModelError("backbone.name or backbone.checkpoint (an anomseg checkpoint) must be given")
    model = build_backbone(b["name"], num_classes, **b.get("options", {}))
    if b.get("checkpoint"):
        load_checkpoint(model, b["checkpoint"], bn=b.get("bn", "auto"))
    return model, b["name"]
