"""Evaluate post-hoc scores and trained heads side by side on a dataset split.

    python tools/eval_caos.py --config configs/eval_synthetic_tiny.yaml [key.sub=value ...]
    torchrun --nproc_per_node=2 tools/eval_caos.py --config ...

Writes report.json, per_image.csv, report.md, ROC / PR curves, score histograms and overlays to
the config's ``out``; an interrupted run resumes without redoing finished images.
"""

from __future__ import annotations

import argparse
import sys

from anomseg.config import load_config
from anomseg.distributed import cleanup
from anomseg.errors import AnomsegError
from anomseg.evaluate import DEFAULTS, markdown_table, run_evaluation


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Evaluate anomaly scores and heads on a dataset split.")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. protocol=caos")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides, DEFAULTS)
        report = run_evaluation(cfg)
        if report is not None:
            print(markdown_table(report))
    except (AnomsegError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
