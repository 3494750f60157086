"""Backbone throughput: images per second at 720x1280 for HRNetV2-W48, PSPNet-ResNet101 and Mask2Former, and the
DINOv2 sizes at 518x1036 (UEM's window).

    python tools/bench/bench_backbones.py [--iters 3] [--device cpu|cuda] [--batch 1] [--dinov2-only]

Inference (eval mode, no gradients), random weights, batch of uint8 RGB images; on CUDA also
with bf16 autocast. ``mask2former`` is the released Swin-T Cityscapes model (100 queries, 19 classes) and
its forward includes the semantic aggregate at the input size (detectron2's order), as evaluation runs it;
``mask2former tiny`` is the demo's. Prints one line per backbone and precision, then (``--compare-timm``) the
official-forward ``hrnet_w48`` against the timm network it replaced (nearest fuse, zero padding to a
multiple of 32), same weights, same run: their throughput ratio. ``dinov2`` rows: the frozen encoder with a
linear decoder, features of the last block (PixOOD's four blocks for ViT-L), random weights, input 518x1036
(37 x 74 patches, no resize), with their parameter count.
"""

from __future__ import annotations

import argparse
import time

import torch

from anomseg.models import build_backbone

BACKBONES = (("hrnet_w48", 19, {}), ("pspnet_r101", 13, {}), ("mask2former", 19, {"preset": "swin_t"}),
             ("mask2former", 13, {"preset": "tiny"}))
DINOV2 = (("vits14", {}), ("vitb14_reg", {}), ("vitl14", {"layers": [5, 11, 17, 23], "decoder": "mlp"}), ("vitg14", {}),
          ("dinov3_vitb16", {}))


class TimmHRNet(torch.nn.Module):
    """The previous ``hrnet_w48``: timm's backbone (nearest-neighbour fuse) padded to a multiple of 32."""

    def __init__(self, official):
        super().__init__()
        import timm
        self.backbone = timm.create_model("hrnet_w48", features_only=True, feature_location="", out_indices=(1, 2, 3, 4))
        own = official.state_dict()
        self.backbone.load_state_dict({k: own[k] for k in self.backbone.state_dict()})
        self.official = official

    def forward(self, images):
        x = (images.float() / 255 - self.official.pixel_mean) / self.official.pixel_std
        H, W = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, (-W) % 32, 0, (-H) % 32))
        b = self.backbone(x)
        feat = torch.cat([b[0]] + [torch.nn.functional.interpolate(t, size=b[0].shape[-2:], mode="bilinear") for t in b[1:]], 1)
        return self.official.last_layer(feat)[..., :-(-H // 4), :-(-W // 4)]


def bench(name, k, device, iters, batch, amp, model=None, options=None, size=(720, 1280)):
    model = (model or build_backbone(name, k, **(options or {}))).to(device).eval()
    x = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=device)

    def step():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    dt = time.perf_counter() - t0
    return iters * batch / dt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compare-timm", action="store_true", help="also time the previous timm-based HRNet")
    p.add_argument("--dinov2-only", action="store_true", help="only the DINOv2 / DINOv3 rows")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; input 720x1280 (DINOv2: 518x1036), batch {a.batch}, torch {torch.__version__}")
    for preset, options in DINOV2:
        model = build_backbone("dinov2", 19, preset=preset, **options)
        params = sum(t.numel() for t in model.encoder.parameters()) / 1e6
        size = (512, 1024) if preset.startswith("dinov3") else (518, 1036)  # multiples of the patch: no resize
        for amp in ((False, True) if device.type == "cuda" else (False,)):
            ips = bench("dinov2", 19, device, a.iters, a.batch, amp, model=model, size=size)
            print(f"dinov2 {preset:12s} {params:7.1f}M {'bf16' if amp else 'fp32'} {size[0]}x{size[1]}: {ips:8.3f} "
                  f"images/s ({1000 / ips:9.1f} ms/image)")
        del model
    if a.dinov2_only:
        return
    for name, k, options in BACKBONES:
        label = f"{name} {options['preset']}" if options else name
        for amp in ((False, True) if device.type == "cuda" else (False,)):
            ips = bench(name, k, device, a.iters, a.batch, amp, options=options)
            print(f"{label:18s} {'bf16' if amp else 'fp32'}: {ips:8.2f} images/s ({1000 / ips:8.1f} ms/image)")
    if a.compare_timm:
        official = build_backbone("hrnet_w48", 19)
        new = bench("hrnet_w48", 19, device, a.iters, a.batch, False, official)
        old = bench("hrnet_w48", 19, device, a.iters, a.batch, False, TimmHRNet(official))
        print(f"hrnet_w48 official / previous timm-based (fp32): {new:.3f} / {old:.3f} images/s = {new / old:.2f}x")


if __name__ == "__main__":
    main()
