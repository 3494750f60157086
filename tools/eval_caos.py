"""Evaluate post-hoc scores and trained heads side by side on a dataset split.

    python tools/eval_caos.py --config configs/eval_synthetic_tiny.yaml [key.sub=value ...]
    torchrun --nproc_per_node=2 tools/eval_caos.py --config ...

Writes report.json, per_image.csv, report.md, ROC / PR curves, score histograms and overlays to
the config's ``out``; an interrupted run resumes without redoing finished images.
"""

import sys

from anomseg.cli import config_tool
from anomseg.errors import AnomsegError
from anomseg.engine.evaluate import DEFAULTS, SCHEMA, markdown_table, run_evaluation


def evaluate_and_print(cfg: dict) -> None:
    report = run_evaluation(cfg)
    if report is not None:  # rank 0
        print(markdown_table(report))


def main(argv=None) -> int:
    return config_tool("Evaluate anomaly scores and heads on a dataset split.", evaluate_and_print, DEFAULTS, argv,
                       errors=(AnomsegError, ValueError), schema=SCHEMA)


if __name__ == "__main__":
    sys.exit(main())
