"""Benchmark the evaluation and bank-extraction pipelines against the bare backbone forward.

    python tools/bench_pipeline.py [--backbone smp:FPN:resnet18] [--height 512 --width 1024]
        [--images 8 40] [--device cpu|cuda] [--amp none|bf16|fp16] [--workers 2]

On synthetic street scenes of the given size, in one run:

* the bare forward: the backbone alone on the same images, already decoded and on the device
  (``model(images)`` under the same autocast), images/s;
* evaluation: ``run_evaluation`` (the library call behind tools/eval_caos.py: reading and decoding,
  inference, the four default post-hoc scores, per-image metrics, histograms, state files, report);
* extraction: ``extract_bank`` (reading, forward, row selection, HDF5 parts; 5000 closed rows per image).

Each tool is run on the first N1 and on the first N2 images; its throughput is the MARGINAL rate
(N2 - N1) / (T2 - T1), so the fixed cost of a call (building the backbone, writing the report and
plots) cancels and what is measured is the steady state of a long run. The bare forward is timed
before and after the tools and the faster of the two is used. The last line reads
``pipeline/forward: evaluation <ratio> extraction <ratio>``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomseg.bank import extract_bank
from anomseg.data import build_dataset, generate_synthetic
from anomseg.evaluate import run_evaluation
from anomseg.models import build_backbone
from anomseg.models.inference import autocast


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bare_forward(model, images, device, amp, repeats=1) -> float:
    """images/s of ``model(image)`` over already-decoded images on the device."""
    for x in images[:2]:  # warm-up
        with autocast(device, amp):
            model(x)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for x in images:
            with autocast(device, amp):
                model(x)
    sync(device)
    return repeats * len(images) / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smp:FPN:resnet18")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--images", type=int, nargs=2, default=(8, 40), metavar=("N1", "N2"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dir", default=None, help="working folder (default: a temporary one, deleted)")
    args = p.parse_args(argv)
    n1, n2 = args.images
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        roots = {}
        for n in (n1, n2):  # two sets, of N1 and N2 train / test images
            roots[n] = work / f"data{n}"
            generate_synthetic(roots[n], num_train=n, num_val=1, num_test=n, num_outliers=20, height=args.height,
                               width=args.width, progress=False)
        backbone = {"name": args.backbone, "options": {}, "checkpoint": None}
        torch.manual_seed(0)
        model = build_backbone(args.backbone, 13).to(args.device).eval()
        test = build_dataset("streethazards", roots[n2], "test")
        images = [torch.from_numpy(np.array(test[i]["image"]))[None].to(args.device) for i in range(n2)]
        forward = [bare_forward(model, images, args.device, args.amp)]
        print(f"{args.backbone} {args.height}x{args.width} on {args.device} (amp {args.amp}), {args.workers} workers, "
              f"torch threads {torch.get_num_threads()}")

        def evaluation(n):
            cfg = {"out": str(work / f"eval{n}"), "device": args.device, "workers": args.workers, "backbone": backbone,
                   "data": {"name": "streethazards", "root": str(roots[n]), "split": "test"},
                   "inference": {"amp": args.amp}, "overlays": {"images": 0}}
            t0 = time.perf_counter()
            run_evaluation(cfg, progress=False)
            return time.perf_counter() - t0

        def extraction(n):
            ds = build_dataset("streethazards", roots[n], "train")
            t0 = time.perf_counter()
            extract_bank(model, ds, work / f"bank{n}", backbone=args.backbone, closed_per_image=5000, chunk_images=8,
                         progress=False, workers=args.workers, amp=args.amp)
            return time.perf_counter() - t0

        rates = {}
        for name, fn in (("evaluation", evaluation), ("extraction", extraction)):
            t1, t2 = fn(n1), fn(n2)
            rates[name] = (n2 - n1) / (t2 - t1)
            print(f"{name}: {n1} images {t1:.2f} s, {n2} images {t2:.2f} s -> {rates[name]:.2f} images/s (marginal)")
        forward.append(bare_forward(model, images, args.device, args.amp))
        best = max(forward)
        print(f"bare forward: {', '.join(f'{f:.2f}' for f in forward)} images/s (before, after); using {best:.2f}")
        print(f"pipeline/forward: evaluation {rates['evaluation'] / best:.2f} extraction {rates['extraction'] / best:.2f}")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
