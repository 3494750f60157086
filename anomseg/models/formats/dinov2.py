"""Formats ``dinov2_official`` / ``dinov3_official`` / ``dinov2_transformers``: the released DINOv2 and DINOv3
encoders, loaded into the encoder of a :class:`~anomseg.models.dinov2.DINOv2` backbone (the decoder is not in
these files and keeps its initialisation).

* ``dinov2_official``: the torch.hub files ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` (plain state dicts);
  ``dinov3_official``: ``dinov3_<arch>_pretrain_<data>-<hash>.pth``. Key layouts and their transformers names
  are FORMATS.md's ("DINOv2 / DINOv2-with-registers / DINOv3"; facebookresearch/dinov2
  ``dinov2/models/vision_transformer.py``, ``dinov2/layers/{block,attention,swiglu_ffn}.py``;
  transformers ``convert_dinov2_to_hf.py``, ``convert_dinov3_vit_to_hf.py``): the fused ``attn.qkv`` is split in
  thirds (q, k, v), SwiGLU's ``w12`` in halves (gate, up), DINOv3's K bias (zeroed by ``bias_mask``) dropped.
  Mapped onto the names of the INSTALLED transformers (4.x ``attention.attention.query`` or 5.x
  ``attention.q_proj``), then loaded strictly: one line names what is missing or left over.
* ``dinov2_transformers``: a local transformers folder (``config.json`` of model_type dinov2,
  dinov2_with_registers or dinov3_vit, + weights), read with ``from_pretrained(local_files_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anomseg.models.formats.common import mismatch, mismatch_text
from anomseg.models.registry import ModelError

NAME = "dinov2_official"
NAME_V3 = "dinov3_official"
NAME_HF = "dinov2_transformers"
HEAD_KEY = None
MODEL_TYPES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel",
               "dinov3_vit": "DINOv3ViTModel"}
# training-only tensors of the releases, never used at inference (FORMATS.md): dropped after a shape check
_TRAINING_ONLY = ("rope_embed.periods", "local_cls_norm.weight", "local_cls_norm.bias")


def recognise(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd and "pos_embed" in sd and any(k.startswith("blocks.") for k in sd)


def recognise_v3(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd and "storage_tokens" in sd and "pos_embed" not in sd


def recognise_folder(path: Path) -> str | None:
    """The model_type of a transformers DINOv2 / DINOv3 folder, or None."""
    import json

    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return None
    try:
        kind = json.loads(cfg.read_text()).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return kind if kind in MODEL_TYPES else None


def _names(own: dict, v3: bool) -> dict:
    """The installed transformers names of one block's tensors, as templates on the block index."""
    layer = "model.layer.{i}." if any(k.startswith("model.layer.") for k in own) else (
        "layer.{i}." if v3 else "encoder.layer.{i}.")
    new_attn = any(".attention.q_proj." in k for k in own)
    attn = ({"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "o": "attention.o_proj"}
            if new_attn else {"q": "attention.attention.query", "k": "attention.attention.key",
                              "v": "attention.attention.value", "o": "attention.output.dense"})
    new_mlp = any(".mlp.gate_proj." in k or ".mlp.up_proj." in k for k in own)
    mlp = ({"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"} if new_mlp
           else {"w12": "mlp.weights_in", "w3": "mlp.weights_out"})
    return {"layer": layer, "attn": attn, "mlp": mlp, "new_mlp": new_mlp}


def convert(model, sd: dict, source: str, v3: bool = False) -> dict:
    """An official DINOv2 / DINOv3 state dict under ``model``'s encoder names (``encoder.`` + transformers')."""
    own = {k[len("encoder."):]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    if not own:
        raise ModelError(f"{source}: a DINOv2 / DINOv3 encoder file; load it into a dinov2 backbone")
    n = _names(own, v3)
    out, left = {}, []
    for key, value in sd.items():
        if key in _TRAINING_ONLY:
            continue
        parts = key.split(".")
        if parts[0] != "blocks":
            top = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
                   "pos_embed": "embeddings.position_embeddings", "register_tokens": "embeddings.register_tokens",
                   "storage_tokens": "embeddings.register_tokens", "norm.weight": "norm.weight",
                   "norm.bias": "norm.bias",
                   "patch_embed.proj.weight": "embeddings.patch_embeddings." + ("weight" if v3 else "projection.weight"),
                   "patch_embed.proj.bias": "embeddings.patch_embeddings." + ("bias" if v3 else "projection.bias")}
            if key not in top:
                left.append(key)
                continue
            name = top[key]
            if not v3 and key.startswith("norm."):
                name = "layernorm." + parts[1]
            if v3 and key == "mask_token" and value.ndim == 2:
                value = value[None]  # (1, D) -> transformers' (1, 1, D)
            out[name] = value
            continue
        i, rest = parts[1], ".".join(parts[2:])
        pre = n["layer"].format(i=i)
        kind = rest.rsplit(".", 1)[-1]
        if rest.startswith("attn.qkv."):
            if kind == "bias_mask":
                continue
            q, k, v = value.chunk(3, 0)
            for name, t in (("q", q), ("k", k), ("v", v)):
                if v3 and kind == "bias" and name == "k":
                    continue  # mask_k_bias: the K bias is zeroed at run time; transformers has none
                out[f"{pre}{n['attn'][name]}.{kind}"] = t
        elif rest.startswith("attn.proj."):
            out[f"{pre}{n['attn']['o']}.{kind}"] = value
        elif rest in ("ls1.gamma", "ls2.gamma"):
            out[f"{pre}layer_scale{rest[2]}.lambda1"] = value
        elif rest.startswith(("norm1.", "norm2.")):
            out[pre + rest] = value
        elif rest.startswith(("mlp.fc1.", "mlp.fc2.")):
            fc = rest.split(".")[1]
            out[pre + (f"mlp.{fc}.{kind}" if not v3 else f"mlp.{'up_proj' if fc == 'fc1' else 'down_proj'}.{kind}")] = value
        elif rest.startswith("mlp.w12.") and n["new_mlp"]:
            gate, up = value.chunk(2, 0)  # dinov2 layers/swiglu_ffn.py: x1, x2 = w12(x).chunk(2); silu(x1) * x2
            out[f"{pre}mlp.gate_proj.{kind}"], out[f"{pre}mlp.up_proj.{kind}"] = gate, up
        elif rest.startswith("mlp.w12."):
            out[f"{pre}{n['mlp']['w12']}.{kind}"] = value
        elif rest.startswith("mlp.w3."):
            out[f"{pre}{n['mlp']['down'] if n['new_mlp'] else n['mlp']['w3']}.{kind}"] = value
        elif v3 and rest.split(".")[1] in ("w1", "w2") and rest.startswith("mlp."):
            out[f"{pre}mlp.{'gate_proj' if rest.split('.')[1] == 'w1' else 'up_proj'}.{kind}"] = value
        else:
            left.append(key)
    missing, unexpected, shapes = mismatch(own, out)
    unexpected = left + unexpected
    if missing or unexpected or shapes:
        raise ModelError(f"{source}: does not fit the dinov2 preset {getattr(model, 'preset', '?')!r} encoder: "
                         f"{mismatch_text(missing, unexpected, shapes, 'keys left over')}; check the preset (sizes, "
                         f"_reg, dinov3_*) against the file")
    return {"encoder." + k: v for k, v in out.items()}


def load_encoder(model, sd: dict, source: str) -> None:
    """Load a converted encoder state dict (``encoder.*`` keys, all of them) into ``model``; the decoder keeps
    its initialisation."""
    result = model.load_state_dict(sd, strict=False)
    if result.unexpected_keys or any(k.startswith("encoder.") for k in result.missing_keys):
        raise ModelError(f"{source}: encoder keys left over or missing after conversion "
                         f"({(result.unexpected_keys + result.missing_keys)[:4]})")


def load_folder(model, folder: Path, kind: str) -> dict:
    """A transformers DINOv2 / DINOv3 folder into ``model``'s encoder, strictly, offline."""
    import transformers

    if not hasattr(model, "encoder") or not hasattr(model, "preset"):
        raise ModelError(f"{folder}: a {kind} folder; load it into a dinov2 backbone")
    cls = getattr(transformers, MODEL_TYPES[kind])
    try:
        net, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except Exception as exc:
        raise ModelError(f"{folder}: cannot be read as a transformers {kind} folder ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    left = [k for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    if left:
        raise ModelError(f"{folder}: from_pretrained left {', '.join(f'{k} {list(info[k])[:3]}' for k in left)}")
    sd = {"encoder." + k: v for k, v in net.state_dict().items()}
    own = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    missing, unexpected, shapes = mismatch(own, sd)
    if missing or unexpected or shapes:
        raise ModelError(f"{folder}: does not fit the dinov2 preset {model.preset!r} encoder: "
                         f"{mismatch_text(missing, unexpected, shapes, 'keys left over')}; check the preset against "
                         f"the folder's config.json")
    load_encoder(model, sd, str(folder))
    return {"format": NAME_HF, "num_classes": model.num_classes, "source": str(folder), "bn": None,
            "decoder": "not in the file (initialised)"}


def load(model, obj: dict, source: str, v3: bool) -> dict:
    """An official file's state dict into ``model``'s encoder; returns the load info."""
    if not hasattr(model, "encoder") or not hasattr(model, "preset"):
        raise ModelError(f"{source}: a released {'DINOv3' if v3 else 'DINOv2'} encoder; load it into a dinov2 backbone")
    sd = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    load_encoder(model, convert(model, sd, source, v3=v3), source)
    return {"format": NAME_V3 if v3 else NAME, "num_classes": model.num_classes, "source": source, "bn": None,
            "decoder": "not in the file (initialised)"}
