"""Benchmark the evaluation and bank-extraction pipelines against the bare backbone forward.

    python tools/bench/bench_pipeline.py [--backbone smp:FPN:resnet18] [--height 256 --width 512]
        [--images 40] [--methods demo|default] [--device cpu|cuda] [--amp none|bf16|fp16] [--workers auto]

On synthetic street scenes of the given size, in one run:

* the bare forward: the backbone alone on the same images, already decoded and on the device
  (``model(images)`` under the same autocast), images/s;
* evaluation: ``run_evaluation`` (the library call behind tools/eval_caos.py: reading and decoding,
  inference, every method's score, per-image metrics, histograms, state files, report). ``--methods demo``
  (default): the methods of ``configs/demo_full.yaml`` that score the backbone's own pass: post-hoc (msp,
  max_logit, entropy, energy), fitted (sml, kl_matching: fitted before the timed loop), CORES and the four
  heads (trained here for a few steps on a small bank of this backbone: their cost does not depend on
  training), 13 methods; the Mask2Former rows need a backbone of their own and are left out.
  ``--methods default``: the evaluation's four default post-hoc scores;
* extraction: ``extract_bank`` (reading, forward, row selection, HDF5 parts; 5000 closed rows per image).

A tool's throughput is what it records in ``timing.json`` for its loop over the images (reading,
forward, scoring / row selection, recording / writing, until the last write has landed), so the fixed
cost of a call (building the backbone, writing the report and plots) is left out: it is the steady
state of a long run. Machines here are noisy and the noise drifts slowly, so each measurement times
the bare forward right before and right after the tool and divides by their mean;
``--repeats`` measurements, the last line gives the median ratios and reads
``pipeline/forward: evaluation <ratio> extraction <ratio>``; the line before it, the last evaluation's loop
per image and stage (``timing.json``'s breakdown: reading, inference, each method's score, metrics, recording).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomseg.bank import extract_bank
from anomseg.config import read_yaml
from anomseg.data import build_dataset, generate_synthetic
from anomseg.engine.evaluate import run_evaluation
from anomseg.engine.train_heads import run_head_training
from anomseg.models import build_backbone, save_checkpoint
from anomseg.models.inference import autocast

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_full.yaml"


def demo_methods(work: Path, data: Path, checkpoint: Path, device: str, workers) -> tuple[list[dict], dict]:
    """The demo's methods on the backbone's own pass (see the module docstring), their heads trained briefly
    on ``checkpoint``; returns (methods, the evaluation's fit section)."""
    demo = read_yaml(DEMO_CONFIG.read_text(), str(DEMO_CONFIG))
    heads = []
    for h in demo["heads"]["heads"]:  # fitting cost is not measured here: PixOOD's fit shortened, its size kept
        h = dict(h)
        h.pop("train", None)
        if h["name"] == "pixood":
            h["options"] = {**h.get("options", {}), "epochs": 2, "grid": 200}
        heads.append(h)
    run_head_training({"out": str(work / "heads"), "device": device, "workers": workers,
                       "data": {"name": "streethazards", "root": str(data),
                                "paste": {"pool": str(data / "outliers"), "count": [1, 3]}},
                       "backbone": {"checkpoint": str(checkpoint)},
                       "bank": {"closed_per_image": 1000, "chunk_images": 4},
                       "heads": heads, "train": {"steps": 3, "eval_every": 3}}, progress=False)
    methods = []
    for m in demo["eval"]["methods"]:
        if "backbone" in m:  # a Mask2Former row: another backbone
            continue
        m = dict(m)
        if m.get("head") is True:
            m["head"] = str(work / "heads" / "heads" / m["name"] / "best.pth")
        methods.append(m)
    return methods, {"max_images": 4}


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
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--methods", default="demo", choices=("demo", "default"),
                   help="demo: the 13 methods of configs/demo_full.yaml on this backbone; default: the 4 post-hoc scores")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v))
    p.add_argument("--tools", default="evaluation,extraction", type=lambda v: v.split(","),
                   help="comma-separated: evaluation, extraction")
    p.add_argument("--repeats", type=int, default=3, help="measurements per tool; the median ratio is printed last")
    p.add_argument("--dir", default=None, help="working folder (default: a temporary one, deleted)")
    args = p.parse_args(argv)
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        data = work / "data"
        generate_synthetic(data, num_train=4, num_val=2, num_test=args.images, num_outliers=20,
                           height=args.height, width=args.width, progress=False)
        torch.manual_seed(0)
        model = build_backbone(args.backbone, 13).to(args.device).eval()
        checkpoint = save_checkpoint(work / "backbone.pth", model)  # the weights the heads are trained on
        backbone = {"checkpoint": str(checkpoint)}
        methods, fit = ([{"name": n} for n in ("msp", "max_logit", "entropy", "energy")], {}) if args.methods == "default" \
            else demo_methods(work, data, checkpoint, args.device, args.workers)
        test = build_dataset("streethazards", data, "test")
        images = [torch.from_numpy(np.array(test[i]["image"]))[None].to(args.device) for i in range(len(test))]
        print(f"{args.backbone} {args.height}x{args.width} on {args.device} (amp {args.amp}), {args.workers} workers, "
              f"torch threads {torch.get_num_threads()}; {len(methods)} methods: {', '.join(m['name'] for m in methods)}")

        def evaluation(rep):
            nonlocal breakdown
            cfg = {"out": str(work / f"eval-{rep}"), "device": args.device, "workers": args.workers, "backbone": backbone,
                   "data": {"name": "streethazards", "root": str(data), "split": "test"}, "methods": methods,
                   "inference": {"amp": args.amp}, "overlays": {"images": 0}, **({"fit": fit} if fit else {})}
            run_evaluation(cfg, progress=False)
            timing = json.loads((work / f"eval-{rep}" / "timing.json").read_text())
            breakdown = {k: 1000 * v / timing["images"] for k, v in timing["breakdown"].items()}
            return timing["images_per_second"]

        def extraction(rep):
            ds = build_dataset("streethazards", data, "test")  # the same images as the bare forward
            extract_bank(model, ds, work / f"bank-{rep}", backbone=args.backbone, closed_per_image=5000, chunk_images=8,
                         progress=False, workers=args.workers, amp=args.amp)
            return json.loads((work / f"bank-{rep}" / "timing.json").read_text())["images_per_second"]

        ratios, breakdown = {}, {}
        for name, fn in (("evaluation", evaluation), ("extraction", extraction)):
            if name not in args.tools:
                continue
            ratios[name] = []
            for rep in range(args.repeats):  # the forward timed right before and after: noise here drifts slowly
                before = bare_forward(model, images, args.device, args.amp)
                rate = fn(rep)
                after = bare_forward(model, images, args.device, args.amp)
                ratios[name].append(rate / ((before + after) / 2))
                print(f"{name} #{rep + 1}: tool {rate:.3g} images/s, bare forward {before:.3g} / {after:.3g} images/s "
                      f"(before / after) -> ratio {ratios[name][-1]:.2f} (to their mean)")
        if breakdown:  # the last evaluation's loop, per image (host time: on CUDA, launches and waits)
            print("evaluation per image (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))
        med = {k: float(np.median(v)) for k, v in ratios.items()}
        print("pipeline/forward: " + " ".join(f"{k} {v:.2f}" for k, v in med.items()))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
