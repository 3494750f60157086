"""The README's main job: the whole anomseg pipeline on the embedded synthetic street scenes.

    python tools/demo.py --out runs/demo [--seed 0] [--config configs/demo.yaml] [key.sub=value ...]

Generates the data, trains a small segmenter on CPU, builds the feature bank, trains OpenGAN-fea
and CLS-fea, evaluates MSP, MaxLogit, entropy, energy, the fitted scores (SML, KL matching) and
both heads, writes the report and overlays, and prints the table. Every stage is skipped when its
output exists; a seed gives the same table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from anomseg.config import load_config
from anomseg.engine.demo import SCHEMA, print_report, run_demo
from anomseg.errors import AnomsegError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="anomseg demo on the synthetic street scenes")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo config (default: configs/demo.yaml)")
    p.add_argument("--workers", type=int, default=None, help="data generator processes (default: all cores)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config, e.g. seg.train.epochs=2")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        report = run_demo(load_config(a.config, a.overrides, schema=SCHEMA), a.out, seed=a.seed, workers=a.workers)
    except AnomsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print_report(report)
    print(f"\nreport: {Path(a.out) / 'eval' / 'report.json'}, overlays: {Path(a.out) / 'eval' / 'overlays'}; "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
