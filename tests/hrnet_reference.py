"""HRNetV2-W48 rebuilt from its published description, independently of ``anomseg.models.hrnet``.

Two things, written from ../shared/docs/FORMATS.md and the HRNet-Semantic-Segmentation paper /
config (W48: stage 2 / 3 / 4 with 1 / 4 / 3 modules, 2 / 3 / 4 branches of widths 48, 96, 192, 384,
4 BasicBlocks a branch; stem of two stride-2 3x3 convs; layer1 of 4 Bottlenecks), with no import of
the module under test:

* :func:`official_state_dict`: a random state dict with the official key names, key by key;
* :func:`reference_forward`: the official forward as plain functional calls over that dict
  (bilinear fuse to the exact branch size, ``align_corners=False``; InPlaceABN written out by hand).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WIDTHS = (48, 96, 192, 384)
MODULES = {2: 1, 3: 4, 4: 3}


def _conv(sd, key, cout, cin, k, g, bias=False, gain=1.0):
    sd[f"{key}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (gain * 2.0 / (cin * k * k)) ** 0.5
    if bias:
        sd[f"{key}.bias"] = torch.randn(cout, generator=g) * 0.1


def _bn(sd, key, c, g, negative=0.0, tracked=True):
    w = 0.3 + 0.5 * torch.rand(c, generator=g)  # keeps activations O(1) through 32 residual blocks
    if negative:  # flip the sign of a fraction of gammas (InPlaceABN files: only |gamma| matters)
        w = torch.where(torch.rand(c, generator=g) < negative, -w, w)
    sd[f"{key}.weight"] = w
    sd[f"{key}.bias"] = torch.randn(c, generator=g) * 0.1
    sd[f"{key}.running_mean"] = torch.randn(c, generator=g) * 0.1
    sd[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=g)
    if tracked:
        sd[f"{key}.num_batches_tracked"] = torch.tensor(7)


def official_state_dict(num_classes=19, seed=0, negative_gamma=0.0, tracked=True, head=True) -> dict:
    """Random weights under the official keys (without the ``model.`` prefix)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    bn = lambda key, c: _bn(sd, key, c, g, negative_gamma, tracked)  # noqa: E731
    _conv(sd, "conv1", 64, 3, 3, g); bn("bn1", 64)  # noqa: E702
    _conv(sd, "conv2", 64, 64, 3, g); bn("bn2", 64)  # noqa: E702
    cin = 64
    for b in range(4):
        p = f"layer1.{b}"
        _conv(sd, f"{p}.conv1", 64, cin, 1, g); bn(f"{p}.bn1", 64)  # noqa: E702
        _conv(sd, f"{p}.conv2", 64, 64, 3, g); bn(f"{p}.bn2", 64)  # noqa: E702
        _conv(sd, f"{p}.conv3", 256, 64, 1, g, gain=0.2); bn(f"{p}.bn3", 256)  # noqa: E702
        if b == 0:
            _conv(sd, f"{p}.downsample.0", 256, cin, 1, g); bn(f"{p}.downsample.1", 256)  # noqa: E702
        cin = 256
    prev = (256,)
    for stage in (2, 3, 4):
        cur = WIDTHS[:stage]
        t = f"transition{stage - 1}"
        for i, c in enumerate(cur):
            if i < len(prev):
                if prev[i] != c:
                    _conv(sd, f"{t}.{i}.0", c, prev[i], 3, g); bn(f"{t}.{i}.1", c)  # noqa: E702
            else:
                _conv(sd, f"{t}.{i}.0.0", c, prev[-1], 3, g); bn(f"{t}.{i}.0.1", c)  # noqa: E702
        for m in range(MODULES[stage]):
            p = f"stage{stage}.{m}"
            for i, c in enumerate(cur):
                for b in range(4):
                    q = f"{p}.branches.{i}.{b}"
                    _conv(sd, f"{q}.conv1", c, c, 3, g); bn(f"{q}.bn1", c)  # noqa: E702
                    _conv(sd, f"{q}.conv2", c, c, 3, g, gain=0.2); bn(f"{q}.bn2", c)  # noqa: E702
            for i, ci in enumerate(cur):
                for j, cj in enumerate(cur):
                    q = f"{p}.fuse_layers.{i}.{j}"
                    if j > i:
                        _conv(sd, f"{q}.0", ci, cj, 1, g, gain=0.3); bn(f"{q}.1", ci)  # noqa: E702
                    elif j < i:
                        for k in range(i - j):
                            cout = ci if k == i - j - 1 else cj
                            _conv(sd, f"{q}.{k}.0", cout, cj, 3, g, gain=0.3); bn(f"{q}.{k}.1", cout)  # noqa: E702
        prev = cur
    if head:
        _conv(sd, "last_layer.0", 720, 720, 1, g, bias=True); bn("last_layer.1", 720)  # noqa: E702
        _conv(sd, "last_layer.3", num_classes, 720, 1, g, bias=True, gain=6.0)
    return sd


def _bn_apply(sd, key, x, abn):
    if not abn:
        return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                            sd[f"{key}.bias"], False, 0.0, 1e-5)
    # InPlaceABN(activation='none'): (x - mean) / sqrt(var + eps) * (|gamma| + eps) + beta
    v = lambda name: sd[f"{key}.{name}"].view(1, -1, 1, 1)  # noqa: E731
    return (x - v("running_mean")) / torch.sqrt(v("running_var") + 1e-5) * (v("weight").abs() + 1e-5) + v("bias")


def reference_forward(sd: dict, x: torch.Tensor, abn: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet-normalised (N, 3, H, W) -> (logits (N, K, h, w), 720-d features (N, 720, h, w))."""
    def cbr(key, x, stride=1, relu=True, conv="0", bnk="1"):
        w = sd[f"{key}.{conv}.weight"] if conv else sd[f"{key}.weight"]
        y = F.conv2d(x, w, None, stride, w.shape[-1] // 2)
        y = _bn_apply(sd, f"{key}.{bnk}", y, abn)
        return F.relu(y) if relu else y

    def conv_bn(ckey, bkey, x, stride=1):
        w = sd[f"{ckey}.weight"]
        return _bn_apply(sd, bkey, F.conv2d(x, w, None, stride, w.shape[-1] // 2), abn)

    x = F.relu(conv_bn("conv1", "bn1", x, 2))
    x = F.relu(conv_bn("conv2", "bn2", x, 2))
    for b in range(4):
        p = f"layer1.{b}"
        out = F.relu(conv_bn(f"{p}.conv1", f"{p}.bn1", x))
        out = F.relu(conv_bn(f"{p}.conv2", f"{p}.bn2", out))
        out = conv_bn(f"{p}.conv3", f"{p}.bn3", out)
        res = conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", x) if b == 0 else x
        x = F.relu(out + res)
    xs = [x]
    for stage in (2, 3, 4):
        t = f"transition{stage - 1}"
        new = []
        for i in range(stage):
            if i < len(xs):
                new.append(cbr(f"{t}.{i}", xs[i]) if f"{t}.{i}.0.weight" in sd else xs[i])
            else:  # a new branch, from the last existing one
                new.append(cbr(f"{t}.{i}.0", xs[-1], stride=2))
        xs = new
        for m in range(MODULES[stage]):
            p = f"stage{stage}.{m}"
            for i in range(stage):
                for b in range(4):
                    q = f"{p}.branches.{i}.{b}"
                    out = F.relu(conv_bn(f"{q}.conv1", f"{q}.bn1", xs[i]))
                    out = conv_bn(f"{q}.conv2", f"{q}.bn2", out)
                    xs[i] = F.relu(out + xs[i])

            def bring(i, j):
                q = f"{p}.fuse_layers.{i}.{j}"
                if j > i:
                    y = conv_bn(f"{q}.0", f"{q}.1", xs[j])
                    return F.interpolate(y, size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                y = xs[j]
                for k in range(i - j):
                    y = conv_bn(f"{q}.{k}.0", f"{q}.{k}.1", y, stride=2)
                    if k < i - j - 1:
                        y = F.relu(y)
                return y

            fused = []
            for i in range(stage):
                y = xs[0] if i == 0 else bring(i, 0)
                for j in range(1, stage):
                    y = y + (xs[j] if j == i else bring(i, j))
                fused.append(F.relu(y))
            xs = fused
    size = xs[0].shape[-2:]
    feat = torch.cat([xs[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in xs[1:]], 1)
    h = F.conv2d(feat, sd["last_layer.0.weight"], sd["last_layer.0.bias"])
    h = F.relu(_bn_apply(sd, "last_layer.1", h, abn))
    return F.conv2d(h, sd["last_layer.3.weight"], sd["last_layer.3.bias"]), feat
