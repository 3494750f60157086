"""Format ``mask2former_detectron2``: detectron2-layout Mask2Former files (the official model zoo's
``model_final_*.pkl``, RbA's / EAM's ``model_final.pth``) read into the ``transformers`` model, by a key map
applied at load time.

Recognised by ``backbone.*`` and ``sem_seg_head.predictor.*`` keys (a ``.pth`` holding ``{"model": state_dict}``
as detectron2's Checkpointer writes it, or a model-zoo ``.pkl`` of numpy arrays, unpickled allowing arrays only:
anything else in the pickle is refused before it can run). Refused in one line: a pickle naming any other
callable, a recomputed buffer (relative position index, pixel statistics) that disagrees with the model's, a
non-Mask2Former backbone.

Layouts (../shared/docs/FORMATS.md, "Checkpoint layouts"; detectron2 names from
facebookresearch/Mask2Former ``mask2former/modeling/backbone/swin.py``, ``pixel_decoder/msdeformattn.py``,
``transformer_decoder/mask2former_transformer_decoder.py``; transformers names from its
``convert_mask2former_original_pytorch_checkpoint_to_pytorch.py`` and the installed model):

* Swin ``backbone.*``: ``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1, attn.qkv (q, k, v fused:
  thirds), attn.proj, attn.relative_position_bias_table, attn.relative_position_index (a buffer,
  recomputed: checked equal, dropped), norm2, mlp.fc1, mlp.fc2}``, ``layers.{i}.downsample.{reduction,
  norm}``, ``norm{i}`` (the per-stage output norms);
* pixel decoder ``sem_seg_head.pixel_decoder.*``: ``input_proj.{i}.{0,1}``, ``transformer.level_embed``,
  ``transformer.encoder.layers.{l}.{self_attn.*, norm1, linear1, linear2, norm2}``, ``mask_features``,
  ``adapter_1.{weight, norm.*}``, ``layer_1.{weight, norm.*}``;
* transformer decoder ``sem_seg_head.predictor.*``: ``query_embed``, ``query_feat``, ``level_embed``,
  ``transformer_self_attention_layers.{i}.{self_attn.{in_proj_weight, in_proj_bias (thirds),
  out_proj}, norm}``, ``transformer_cross_attention_layers.{i}.{multihead_attn.*, norm}``,
  ``transformer_ffn_layers.{i}.{linear1, linear2, norm}``, ``decoder_norm``, ``mask_embed.layers.{k}``,
  ``class_embed``;
* ``criterion.empty_weight`` (the no-object weight of the loss) and detectron2's ``pixel_mean`` /
  ``pixel_std`` buffers (dropped after checking they are the ImageNet statistics on 0..255).

transformers' Swin keeps a final ``layernorm`` that Mask2Former's forward never uses (it reads the
per-stage ``hidden_states_norms``); detectron2's Swin has none, so it keeps its initialisation. Every
other key of the model must come from the file and every key of the file must be used: the error says
what is missing or left over, in one line.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from anomseg.errors import AnomsegError
from anomseg.models.formats.common import mask2former_net
from anomseg.models.registry import ModelError

log = logging.getLogger(__name__)

NAME = "mask2former_detectron2"
HEAD_KEY = "net.class_predictor.weight"  # K + 1 rows: the known classes and "no object"

SWIN = "model.pixel_level_module.encoder."
PIXEL = "model.pixel_level_module.decoder."
DECODER = "model.transformer_module."
UNUSED_TARGETS = (SWIN + "swin.layernorm.weight", SWIN + "swin.layernorm.bias")
DETECTRON2_PIXEL_MEAN = (123.675, 116.28, 103.53)  # MODEL.PIXEL_MEAN / PIXEL_STD of the Swin configs (RGB)
DETECTRON2_PIXEL_STD = (58.395, 57.12, 57.375)

# Swin block parts whose transformers names changed between releases: first the 5.x name, then 4.x.
_SWIN_BLOCK = {
    "norm1": ("layernorm_before",),
    "attn.proj": ("attention.o_proj", "attention.output.dense"),
    "attn.relative_position_bias_table": ("attention.relative_position_bias.relative_position_bias_table",
                                          "attention.self.relative_position_bias_table"),
    "norm2": ("layernorm_after",),
    "mlp.fc1": ("mlp.fc1", "intermediate.dense"),
    "mlp.fc2": ("mlp.fc2", "output.dense"),
}
_SWIN_QKV = (("attention.q_proj", "attention.k_proj", "attention.v_proj"),
             ("attention.self.query", "attention.self.key", "attention.self.value"))


def recognise(sd: dict) -> bool:
    return any(k.startswith("sem_seg_head.predictor.") for k in sd) and any(k.startswith("backbone.") for k in sd)


def convert(model, sd: dict, source: str) -> dict:
    """The file's state dict under our model's names (``net.`` + transformers')."""
    net = mask2former_net(model, source)
    try:
        sd = convert_detectron2(sd, net, source)
    except AnomsegError as exc:
        raise ModelError(str(exc)) from None
    log.info("%s: detectron2 Mask2Former layout, %d tensors mapped to transformers' names", source, len(sd))
    return {"net." + k: v for k, v in sd.items()}


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


def read_pickle(path: Path) -> dict:
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
    for k, v in sd.items():
        if not isinstance(k, str) or v.dtype.kind not in "biuf":
            raise ModelError(f"{path}: entry {k!r} is {'not named by a string' if not isinstance(k, str) else f'an array of {v.dtype}'}"
                             f"; a detectron2 model-zoo file holds numeric arrays under string names: refused")
    return {"model": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}}


# (detectron2 prefix) -> (transformers prefix, [(regex of the rest, replacement)]): the pixel decoder, then the
# transformer decoder (its fused self-attention in_proj is split in thirds in _rename)
_HEAD_RULES = {
    "sem_seg_head.pixel_decoder.": (PIXEL, (
        (r"input_proj\.(\d+)\.([01])\.(.+)", r"input_projections.\1.\2.\3"),
        (r"transformer\.level_embed", "level_embed"),
        (r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(.+)", r"encoder.layers.\1.self_attn.\2"),
        (r"transformer\.encoder\.layers\.(\d+)\.norm1\.(.+)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
        (r"transformer\.encoder\.layers\.(\d+)\.linear1\.(.+)", r"encoder.layers.\1.fc1.\2"),
        (r"transformer\.encoder\.layers\.(\d+)\.linear2\.(.+)", r"encoder.layers.\1.fc2.\2"),
        (r"transformer\.encoder\.layers\.(\d+)\.norm2\.(.+)", r"encoder.layers.\1.final_layer_norm.\2"),
        (r"mask_features\.(.+)", r"mask_projection.\1"),
        (r"(adapter_1|layer_1)\.weight", r"\1.0.weight"),
        (r"(adapter_1|layer_1)\.norm\.(.+)", r"\1.1.\2"))),
    "sem_seg_head.predictor.class_embed.": ("class_predictor.", ((r"(weight|bias)", r"\1"),)),
    "sem_seg_head.predictor.": (DECODER, (
        (r"query_embed\.weight", "queries_embedder.weight"),
        (r"query_feat\.weight", "queries_features.weight"),
        (r"level_embed\.weight", "level_embed.weight"),
        (r"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.(.+)", r"decoder.layers.\1.self_attn.out_proj.\2"),
        (r"transformer_self_attention_layers\.(\d+)\.norm\.(.+)", r"decoder.layers.\1.self_attn_layer_norm.\2"),
        (r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(.+)", r"decoder.layers.\1.cross_attn.\2"),
        (r"transformer_cross_attention_layers\.(\d+)\.norm\.(.+)", r"decoder.layers.\1.cross_attn_layer_norm.\2"),
        (r"transformer_ffn_layers\.(\d+)\.linear1\.(.+)", r"decoder.layers.\1.fc1.\2"),
        (r"transformer_ffn_layers\.(\d+)\.linear2\.(.+)", r"decoder.layers.\1.fc2.\2"),
        (r"transformer_ffn_layers\.(\d+)\.norm\.(.+)", r"decoder.layers.\1.final_layer_norm.\2"),
        (r"decoder_norm\.(.+)", r"decoder.layernorm.\1"),
        (r"mask_embed\.layers\.(\d+)\.(.+)", r"decoder.mask_predictor.mask_embedder.\1.0.\2"))),
}


def _pick(own: set, stem: str, candidates) -> str:
    for c in candidates:
        if f"{stem}{c}.weight" in own or f"{stem}{c}" in own:
            return stem + c
    return stem + candidates[0]


def _rename(key: str, own: set) -> list[tuple[str, slice | None]]:
    """The transformers key(s) of one detectron2 key: [(target, third or None)], [] for a dropped buffer."""
    m = re.fullmatch(r"backbone\.patch_embed\.(proj|norm)\.(weight|bias)", key)
    if m:
        part = "patch_embeddings.projection" if m[1] == "proj" else "norm"
        return [(f"{SWIN}swin.embeddings.{part}.{m[2]}", None)]
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    stem = f"{SWIN}swin.encoder.layers.{m[1]}.blocks.{m[2]}." if m else ""
    if m and m[3] == "attn.qkv":
        names = _SWIN_QKV[0] if f"{stem}{_SWIN_QKV[0][0]}.weight" in own else _SWIN_QKV[1]
        return [(f"{stem}{n}.{m[4]}", i) for i, n in enumerate(names)]
    if m and m[3] in _SWIN_BLOCK:
        return [(f"{_pick(own, stem, _SWIN_BLOCK[m[3]])}.{m[4]}", None)]
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table", key)
    if m:
        stem = f"{SWIN}swin.encoder.layers.{m[1]}.blocks.{m[2]}."
        return [(_pick(own, stem, _SWIN_BLOCK["attn.relative_position_bias_table"]), None)]
    if re.fullmatch(r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index", key):
        return []
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)", key)
    if m:
        return [(f"{SWIN}swin.encoder.layers.{m[1]}.downsample.{m[2]}.{m[3]}", None)]
    m = re.fullmatch(r"backbone\.norm(\d)\.(weight|bias)", key)
    if m:
        return [(f"{SWIN}hidden_states_norms.stage{int(m[1]) + 1}.{m[2]}", None)]

    m = re.fullmatch(r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", key)
    if m:
        return [(f"{DECODER}decoder.layers.{m[1]}.self_attn.{n}_proj.{m[2]}", i) for i, n in enumerate("qkv")]
    for prefix, (target, rules) in _HEAD_RULES.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            for src, dst in rules:
                if re.fullmatch(src, rest):
                    return [(target + re.sub(f"^{src}$", dst, rest), None)]
            return [(None, None)]
    if key == "criterion.empty_weight":
        return [(key, None)]
    return [(None, None)]


def _check_buffers(sd: dict, net: torch.nn.Module, source: str) -> None:
    """detectron2's recomputed buffers must agree with ours: the relative position indices and pixel statistics."""
    own = dict(net.named_buffers())
    for key, value in sd.items():
        m = re.fullmatch(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_index", key)
        if m:
            stem = f"{SWIN}swin.encoder.layers.{m[1]}.blocks.{m[2]}.attention."
            mine = [v for k, v in own.items() if k.startswith(stem) and k.endswith("relative_position_index")]
            if mine and not torch.equal(mine[0].to(value.dtype).view(-1), value.view(-1)):
                raise AnomsegError(f"{source}: {key} differs from the model's (another Swin window size?); build the "
                                   f"preset the file was trained with")
    for key, want in (("pixel_mean", DETECTRON2_PIXEL_MEAN), ("pixel_std", DETECTRON2_PIXEL_STD)):
        if key in sd and not torch.allclose(sd[key].float().view(-1), torch.tensor(want), atol=1e-3):
            raise AnomsegError(f"{source}: {key} = {sd[key].view(-1).tolist()} is not detectron2's ImageNet {key} "
                               f"{list(want)}; anomseg normalises with the ImageNet statistics")


def convert_detectron2(sd: dict, net: torch.nn.Module, source: str = "checkpoint") -> dict:
    """A detectron2-layout state dict under the ``transformers`` model ``net``'s names (see the module docstring);
    a key the map does not know keeps its name, so the caller's strict load names it with what is missing.
    Raises :class:`AnomsegError` when a recomputed buffer disagrees."""
    own = net.state_dict()
    names = set(own)
    _check_buffers(sd, net, source)
    out = {}
    for key, value in sd.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        targets = _rename(key, names)
        if targets and targets[0][0] is None:
            out[key] = value  # unmapped: kept under its own name, so the strict load names it as left over
            continue
        for target, third in targets:
            out[target] = value.chunk(3, dim=0)[third] if third is not None else value
    for key in UNUSED_TARGETS:
        if key in names and key not in out:
            out[key] = own[key].clone()
    return out
