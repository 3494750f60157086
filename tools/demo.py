"""The README's main job on the embedded synthetic data.

Stage 1 (this version): generate the synthetic street-scene dataset and print a summary of
each split. Later stages (segmenter, feature bank, heads, evaluation) grow from here. Every
stage is skipped when its output already exists; the resolved config is saved in the output.

    python tools/demo.py --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from anomseg.data import build_dataset, generate_synthetic
from anomseg.data.summary import summarize
from anomseg.errors import AnomsegError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="anomseg demo on the synthetic street scenes")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=300, help="synthetic training images")
    p.add_argument("--val", type=int, default=50)
    p.add_argument("--test", type=int, default=150)
    p.add_argument("--workers", type=int, default=None, help="generator processes (default: all cores)")
    return p.parse_args(argv)


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"seed": args.seed, "data": {"root": str(out / "data"), "train": args.train, "val": args.val,
                                          "test": args.test}}
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    meta = generate_synthetic(out / "data", seed=args.seed, num_train=args.train, num_val=args.val,
                              num_test=args.test, workers=args.workers)
    summary = {"generator": meta}
    print(f"{'split':6} {'images':>6} {'with anomaly':>12} {'anomaly px':>10}  largest classes")
    for split in ("train", "val", "test"):
        s = summarize(build_dataset("streethazards", out / "data", split), progress=True)
        summary[split] = s
        top = sorted(s["class_fraction"].items(), key=lambda kv: -kv[1])[:4]
        print(f"{split:6} {s['images']:6d} {s['images_with_anomaly']:12d} {100 * s['anomaly_fraction']:9.2f}%  "
              + ", ".join(f"{n} {100 * f:.0f}%" for n, f in top))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'summary.json'} and {out / 'config.yaml'}")
    return summary


def main(argv=None) -> int:
    try:
        run(parse_args(argv))
    except AnomsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
