"""Official-layout DINOv2 / DINOv3 state dicts written key by key from ../shared/docs/FORMATS.md, and a reference
forward rebuilt from the description there (plain torch, float64), independent of transformers and of anomseg.

FORMATS.md facts restated: tokens = [cls, registers, patches row-major]; the (interpolated) position embedding is
added BEFORE the registers are inserted; block: x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x)); qkv rows are
q, k, v thirds with heads contiguous; attention scale head_dim ** -0.5; exact GELU; LayerNorm eps 1e-6 (DINOv2) or
1e-5 (DINOv3); get_intermediate_layers(norm=True) = the final norm on each chosen block's output, patches only.
Position interpolation (DINOv2): bicubic in float32 on the M x M table; plain models scale_factor ((rows + 0.1) / M,
(cols + 0.1) / M) without antialias, register models size (rows, cols) with antialias; none for a square input with
M * M patches. DINOv3: no position table; 2-D RoPE on q and k of the patch tokens: periods 100 ** (4k / Dh), k <
Dh / 4; patch centres ((i + 0.5) / h, (j + 0.5) / w) mapped to [-1, 1]; angles 2 pi coord / period laid out [y, x]
and tiled twice to Dh; rotate-half; the K third of the qkv bias is zeroed by bias_mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SIZES = {"tiny": dict(d=48, blocks=4, heads=3, mlp=192, regs=0, patch=14, table=16),
         "tiny_reg": dict(d=48, blocks=4, heads=3, mlp=192, regs=4, patch=14, table=16),
         "dinov3_tiny": dict(d=48, blocks=4, heads=3, mlp=192, regs=4, patch=16, table=0)}


def official_state_dict(preset: str, seed: int = 0) -> dict:
    """Random tensors under the official key names and shapes (FORMATS.md "Keys")."""
    s, g = SIZES[preset], torch.Generator().manual_seed(seed)
    d, p = s["d"], s["patch"]
    r = lambda *shape, scale=0.2: (torch.randn(*shape, generator=g) * scale).float()  # noqa: E731
    v3 = preset.startswith("dinov3")
    sd = {"cls_token": r(1, 1, d), "mask_token": r(1, d), "patch_embed.proj.weight": r(d, 3, p, p, scale=0.05),
          "patch_embed.proj.bias": r(d), "norm.weight": 1 + r(d), "norm.bias": r(d)}
    if v3:
        sd["storage_tokens"] = r(1, s["regs"], d)
        dh = d // s["heads"]
        sd["rope_embed.periods"] = 100.0 ** (4 * torch.arange(dh // 4) / dh)
    else:
        sd["pos_embed"] = r(1, 1 + s["table"] ** 2, d)
        if s["regs"]:
            sd["register_tokens"] = r(1, s["regs"], d)
    for i in range(s["blocks"]):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(d), b + "norm1.bias": r(d), b + "attn.qkv.weight": r(3 * d, d),
                   b + "attn.qkv.bias": r(3 * d), b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
                   b + "ls1.gamma": 1 + r(d), b + "norm2.weight": 1 + r(d), b + "norm2.bias": r(d),
                   b + "mlp.fc1.weight": r(s["mlp"], d), b + "mlp.fc1.bias": r(s["mlp"]),
                   b + "mlp.fc2.weight": r(d, s["mlp"]), b + "mlp.fc2.bias": r(d), b + "ls2.gamma": 1 + r(d)})
        if v3:
            mask = torch.ones(3 * d)
            mask[d:2 * d] = 0
            sd[b + "attn.qkv.bias_mask"] = mask
    return sd


def _ln(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w.to(x), b.to(x), eps)


def _positions(sd, rows, cols, registers, dtype):
    table = sd["pos_embed"]
    m = int(math.sqrt(table.shape[1] - 1))
    if rows == cols and rows * cols == m * m:
        return table.to(dtype)
    grid = table.float()[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if registers:
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=True)
    else:
        grid = F.interpolate(grid, scale_factor=((rows + 0.1) / m, (cols + 0.1) / m), mode="bicubic")
    return torch.cat([table.float()[:, :1], grid.flatten(2).transpose(1, 2)], 1).to(dtype)


def _rope(q, rows, cols, prefix):
    """RoPE on the patch tokens of q (B, heads, N, Dh)."""
    dh = q.shape[-1]
    periods = 100.0 ** (4 * torch.arange(dh // 4, dtype=torch.float64) / dh)
    ys = (torch.arange(rows, dtype=torch.float64) + 0.5) / rows * 2 - 1
    xs = (torch.arange(cols, dtype=torch.float64) + 0.5) / cols * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)  # (hw, 2): y, x
    angles = (2 * math.pi * coords[:, :, None] / periods).reshape(len(coords), -1)  # [y freqs, x freqs]
    angles = angles.repeat(1, 2).to(q)
    patches = q[..., prefix:, :]
    half = patches.chunk(2, -1)
    rotated = torch.cat([-half[1], half[0]], -1)
    return torch.cat([q[..., :prefix, :], patches * angles.cos() + rotated * angles.sin()], -2)


def reference_features(preset: str, sd: dict, x: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """Normalised float (B, 3, H, W), H and W multiples of the patch -> (B, D * len(layers), H/p, W/p) in x's dtype."""
    s = SIZES[preset]
    v3 = preset.startswith("dinov3")
    sd = {k: v.to(x.dtype) if k != "pos_embed" else v for k, v in sd.items()}
    eps, heads, regs = (1e-5 if v3 else 1e-6), s["heads"], s["regs"]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=s["patch"])
    b, d, rows, cols = t.shape
    t = torch.cat([sd["cls_token"].expand(b, 1, d), t.flatten(2).transpose(1, 2)], 1)
    if not v3:
        t = t + _positions(sd, rows, cols, bool(regs), x.dtype)
    if regs:
        reg = sd["storage_tokens" if v3 else "register_tokens"]
        t = torch.cat([t[:, :1], reg.expand(b, regs, d), t[:, 1:]], 1)
    outs = []
    for i in range(s["blocks"]):
        p = f"blocks.{i}."
        y = _ln(t, sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        bias = sd[p + "attn.qkv.bias"] * (sd[p + "attn.qkv.bias_mask"] if v3 else 1)
        q, k, v = (y @ sd[p + "attn.qkv.weight"].T + bias).chunk(3, -1)
        q, k, v = (z.reshape(b, -1, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        if v3:
            q, k = _rope(q, rows, cols, 1 + regs), _rope(k, rows, cols, 1 + regs)
        a = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, -1) @ v
        a = a.transpose(1, 2).reshape(b, -1, d) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        t = t + sd[p + "ls1.gamma"] * a
        y = _ln(t, sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]) @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
        t = t + sd[p + "ls2.gamma"] * y
        if i in layers:
            outs.append(_ln(t, sd["norm.weight"], sd["norm.bias"], eps)[:, 1 + regs:])
    return torch.cat([o.transpose(1, 2).reshape(b, d, rows, cols) for o in outs], 1)
