"""DINOv2 / DINOv2-with-registers / DINOv3 ViTs on ``transformers`` as frozen feature extractors, with a small
segmentation decoder on their patch features.

Facts (../shared/docs/FORMATS.md, "DINOv2 / DINOv2-with-registers / DINOv3"; facebookresearch/dinov2
``dinov2/models/vision_transformer.py``, ``dinov2/hub/backbones.py``; facebookresearch/dinov3 ``hub/backbones.py``):

* The encoder is ``transformers.Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``DINOv3ViTModel`` built from a
  config (never from the hub), in eval mode and frozen by default (DINOv3's RoPE jitters its coordinates in
  train mode: a frozen encoder stays in eval whatever ``train()`` is called with).
* Features are what the official ``get_intermediate_layers(x, n=layers, norm=True)`` returns: the residual
  stream after each chosen block (0-based indices), through the FINAL LayerNorm, patch tokens only (cls and
  registers dropped), as float (N, C, H/p, W/p); several blocks are concatenated along C (PixOOD: 5, 11, 17, 23).
  transformers' ``hidden_states[i + 1]`` is the output of block i, not normalised.
* Position embeddings (DINOv2 only; DINOv3 uses RoPE and interpolates nothing) are interpolated as the OFFICIAL
  code does, not as transformers does: plain models bicubic with ``scale_factor = ((rows + 0.1) / M, (cols +
  0.1) / M)``, no antialias; register models ``size = (rows, cols)`` with antialias; skipped only for a square
  input with as many patches as the table (518 x 518); computed in float32 (cls position included), then cast
  to the input's dtype. transformers >= PR #33226 drops the 0.1 offset for the plain models, which changes
  every feature at any other size (up to 0.4-1.1, FORMATS.md): :func:`official_position_embedding` replaces
  its interpolation on every model built here.
* Input-size rule (``size_rule="resize"``, PixOOD ``code/dataloaders/transforms.py`` ResizeLongestSideDivisible):
  the long side L becomes floor(L / p) * p, the short side p * floor(S * L' / L / p), bilinear with antialias;
  an input already of multiples of p is left alone. The logits and features then cover the whole image.

Decoders (``decoder=``): ``linear`` is DINOv2's own linear segmentation head, BRAVO 2024's winner (dinov2
``eval/segmentation/models/decode_heads/linear_head.py`` BNHead: BatchNorm over the concatenated features,
then a 1x1 convolution); ``mlp`` is PixOOD's probe (``code/net/models/dinov2.py``: 1x1 conv C -> C, GELU, 1x1
conv C -> K). Logits are at the patch grid, stride p.

Presets (``preset=``): ``vits14`` ``vitb14`` ``vitl14`` ``vitg14`` (+ ``_reg``: 4 registers) are the released
DINOv2 sizes; ``dinov3_vits16`` ``dinov3_vits16plus`` ``dinov3_vitb16`` ``dinov3_vitl16`` ``dinov3_vith16plus``
``dinov3_vit7b16`` the DINOv3 ones (transformers' converter sizes); ``tiny`` / ``tiny_reg`` / ``dinov3_tiny``
are ours, for tests and the demo.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.errors import AnomsegError
from anomseg.models.base import SegmentationBackbone, SegOutput
from anomseg.options import Range

# (family, hidden, blocks, heads, MLP hidden, registers, gated MLP); dinov2 hub/backbones.py + vision_transformer.py
# (vit_small..vit_giant2: giant's SwiGLU hidden (int(4D * 2/3) + 7) // 8 * 8 = 4096), dinov3 convert_dinov3_vit_to_hf
# sizes as FORMATS.md lists them.
_V2 = {"vits14": (384, 12, 6), "vitb14": (768, 12, 12), "vitl14": (1024, 24, 16), "vitg14": (1536, 40, 24)}
PRESETS: dict[str, dict] = {}
for _name, (_d, _l, _h) in _V2.items():
    for _suffix, _regs in (("", 0), ("_reg", 4)):
        PRESETS[_name + _suffix] = dict(family="dinov2", hidden=_d, blocks=_l, heads=_h, registers=_regs,
                                        gated=_name == "vitg14", mlp=4096 if _name == "vitg14" else 4 * _d, patch=14,
                                        image=518)
for _name, (_d, _l, _h, _mlp, _gated) in {
        "vits16": (384, 12, 6, 1536, False), "vits16plus": (384, 12, 6, 1536, True),
        "vitb16": (768, 12, 12, 3072, False), "vitl16": (1024, 24, 16, 4096, False),
        "vith16plus": (1280, 32, 20, 5120, True), "vit7b16": (4096, 40, 32, 8192, True)}.items():
    PRESETS["dinov3_" + _name] = dict(family="dinov3", hidden=_d, blocks=_l, heads=_h, registers=4, gated=_gated,
                                      mlp=_mlp, patch=16, image=224, qv_bias=_name != "vit7b16")
# ours: small enough for the tests and the demo (a 16 x 16 position table: 224 / 14)
PRESETS["tiny"] = dict(family="dinov2", hidden=48, blocks=4, heads=3, registers=0, gated=False, mlp=192, patch=14,
                       image=224)
PRESETS["tiny_reg"] = {**PRESETS["tiny"], "registers": 4}
PRESETS["dinov3_tiny"] = dict(family="dinov3", hidden=48, blocks=4, heads=3, registers=4, gated=False, mlp=192,
                              patch=16, image=224, qv_bias=True)
PLAIN_OFFSET = 0.1  # dinov2 hub/backbones.py: interpolate_offset 0.1 (plain), 0.0 with antialias (registers)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise AnomsegError("the dinov2 backbone needs Hugging Face transformers, which is not installed: "
                           "pip install 'transformers>=4.46'") from None
    return transformers


def encoder_config(preset: str):
    """The transformers config of a preset, every default that differs from the release set explicitly
    (Dinov2WithRegistersConfig defaults to patch 16 / image 224; DINOv3ViTConfig to no registers)."""
    if preset not in PRESETS:
        raise AnomsegError(f"dinov2 preset {preset!r} unknown; valid: {', '.join(PRESETS)}")
    p, tr = PRESETS[preset], _transformers()
    common = dict(hidden_size=p["hidden"], num_hidden_layers=p["blocks"], num_attention_heads=p["heads"],
                  patch_size=p["patch"], image_size=p["image"], num_register_tokens=p["registers"])
    if p["family"] == "dinov3":
        return tr.DINOv3ViTConfig(**common, intermediate_size=p["mlp"], use_gated_mlp=p["gated"], hidden_act="gelu",
                                  layer_norm_eps=1e-5, rope_theta=100.0, key_bias=False, query_bias=p["qv_bias"],
                                  value_bias=p["qv_bias"], layerscale_value=1e-5)
    common.update(mlp_ratio=4, use_swiglu_ffn=p["gated"],
                  layer_norm_eps=1e-6, qkv_bias=True, layerscale_value=1.0, hidden_act="gelu")
    if p["registers"]:
        return tr.Dinov2WithRegistersConfig(**common)
    common.pop("num_register_tokens")
    return tr.Dinov2Config(**common)


def official_position_embedding(table: torch.Tensor, rows: int, cols: int, registers: bool, dtype) -> torch.Tensor:
    """The position embeddings of a rows x cols patch grid as dinov2's ``interpolate_pos_encoding`` computes them.

    Args:
        table: float (1, 1 + M * M, D), the learned table (cls first).
        registers: True for the register models (size-based, antialias), False for the plain ones (scale
            factor (n + 0.1) / M, no antialias).
        dtype: the tokens' dtype; the interpolation itself runs in float32, as the release does.
    Returns:
        (1, 1 + rows * cols, D) in ``dtype``.
    """
    n = table.shape[1] - 1
    if n == rows * cols and rows == cols:
        return table.to(dtype)
    m = int(math.sqrt(n))
    pos = table.float()
    grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if registers:
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=True)
    else:
        grid = F.interpolate(grid, scale_factor=((rows + PLAIN_OFFSET) / m, (cols + PLAIN_OFFSET) / m), mode="bicubic",
                             antialias=False)
    if tuple(grid.shape[-2:]) != (rows, cols):
        raise AnomsegError(f"position interpolation gave a {tuple(grid.shape[-2:])} grid for {rows} x {cols} patches")
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat([pos[:, :1], grid], 1).to(dtype)


def _install_official_interpolation(embeddings: nn.Module, registers: bool) -> None:
    """Replace transformers' ``interpolate_pos_encoding`` of a DINOv2 embeddings module by the official one."""
    patch = embeddings.patch_embeddings.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch

    def interpolate_pos_encoding(self, tokens, height, width):
        return official_position_embedding(self.position_embeddings, height // patch, width // patch, registers,
                                           tokens.dtype)

    embeddings.interpolate_pos_encoding = interpolate_pos_encoding.__get__(embeddings)


def build_encoder(preset: str) -> nn.Module:
    """A randomly initialised transformers DINOv2 / DINOv3 model of ``preset`` (no download), with the official
    position interpolation installed."""
    cfg = encoder_config(preset)
    tr = _transformers()
    p = PRESETS[preset]
    if p["family"] == "dinov3":
        return tr.DINOv3ViTModel(cfg)
    net = (tr.Dinov2WithRegistersModel if p["registers"] else tr.Dinov2Model)(cfg)
    _install_official_interpolation(net.embeddings, bool(p["registers"]))
    return net


def resized_size(height: int, width: int, patch: int) -> tuple[int, int]:
    """PixOOD's test-time size: long side floor(L / p) * p, short side p * floor(S * L' / L / p) (1024 x 2048 ->
    1022 x 2044, 720 x 1280 -> 714 x 1274)."""
    long_, short = max(height, width), min(height, width)
    new_long = (long_ // patch) * patch
    new_short = patch * int(math.floor(short * new_long / long_ / patch))
    if new_short < patch:
        raise AnomsegError(f"image {height} x {width} is too small for patch size {patch}")
    return (new_long, new_short) if height >= width else (new_short, new_long)


class DINOv2(SegmentationBackbone):
    """A DINOv2 / DINOv3 ViT with a segmentation decoder on its patch features.

    Args:
        num_classes: K.
        preset: a key of :data:`PRESETS`.
        layers: 0-based block indices whose normalised patch tokens are the features (concatenated);
            None = the last block.
        decoder: ``"linear"`` (BatchNorm + 1x1 conv, DINOv2's linear head) or ``"mlp"`` (PixOOD's probe).
        frozen: the encoder's parameters take no gradient and it stays in eval mode.
        size_rule: ``"resize"`` (PixOOD's rule, see the module docstring).
        label_agreement: share of a patch's pixels its majority label must reach for the patch to carry it
            (bank rows, patch labels; PixOOD PATCH_MAJORITY_VOTE_THR 0.9); below it the patch is void.
    Output:
        :class:`SegOutput` with logits float (N, K, h, w) and features float (N, C * len(layers), h, w),
        h, w = the resized input's size / patch.
    """

    def __init__(self, num_classes: int, preset: str = "tiny", layers: list[int] | None = None,
                 decoder: Literal["linear", "mlp"] = "linear", frozen: bool = True,
                 size_rule: Literal["resize"] = "resize",
                 label_agreement: Annotated[float, Range(0.0, 1.0, lo_open=True)] = 0.9):
        super().__init__()
        if preset not in PRESETS:
            raise AnomsegError(f"dinov2 preset {preset!r} unknown; valid: {', '.join(PRESETS)}")
        spec = PRESETS[preset]
        self.preset, self.family = preset, spec["family"]
        self.num_classes, self.patch, self.stride = num_classes, spec["patch"], spec["patch"]
        self.registers = spec["registers"]
        blocks = spec["blocks"]
        self.layers = [blocks - 1] if layers is None else [int(i) for i in layers]
        bad = [i for i in self.layers if not 0 <= i < blocks]
        if bad or not self.layers:
            raise AnomsegError(f"dinov2 layers {self.layers}: preset {preset!r} has blocks 0..{blocks - 1}")
        self.encoder = build_encoder(preset)
        self.hidden = spec["hidden"]
        self.feature_dim = self.hidden * len(self.layers)
        self.decoder_kind, self.size_rule, self.label_agreement = decoder, size_rule, label_agreement
        if decoder == "linear":
            self.decoder = nn.Sequential(nn.BatchNorm2d(self.feature_dim), nn.Conv2d(self.feature_dim, num_classes, 1))
        else:
            self.decoder = nn.Sequential(nn.Conv2d(self.feature_dim, self.feature_dim, 1), nn.GELU(),
                                         nn.Conv2d(self.feature_dim, num_classes, 1))
        self.frozen = frozen
        if frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, H, W) -> the input the ViT runs on (sides multiples of the patch size)."""
        h, w = x.shape[-2:]
        if h % self.patch == 0 and w % self.patch == 0:
            return x
        size = resized_size(h, w, self.patch)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input with sides multiples of the patch size -> float (N, C * len(layers), H/p, W/p): the chosen
        blocks' outputs through the final norm, patch tokens only (``get_intermediate_layers(norm=True)``)."""
        n, _, h, w = x.shape
        rows, cols = h // self.patch, w // self.patch
        grad = torch.is_grad_enabled() and not self.frozen
        with torch.set_grad_enabled(grad):
            out = self.encoder(pixel_values=x, output_hidden_states=True)
            hidden = out.hidden_states
            norm = self.encoder.layernorm if self.family == "dinov2" else self.encoder.norm
            skip = 1 + self.registers
            maps = [norm(hidden[i + 1])[:, skip:].transpose(1, 2).reshape(n, self.hidden, rows, cols)
                    for i in self.layers]
        return torch.cat(maps, 1) if len(maps) > 1 else maps[0]

    def forward_normalized(self, x):
        x = self.model_input(x)
        feat = self.patch_features(x)
        return SegOutput(self.decoder(feat), feat)

    def classifier(self) -> nn.Module:
        return self.decoder
