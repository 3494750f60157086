"""Evaluate post-hoc scores and trained heads side by side on a dataset split (``anomseg eval``).

    python tools/eval_caos.py --config configs/eval_synthetic_tiny.yaml [key.sub=value ...]
    torchrun --nproc_per_node=2 tools/eval_caos.py --config ...

Writes report.json, report.html, per_image.csv, report.md, ROC / PR curves, score histograms and overlays
to the config's ``out``; an interrupted run resumes without redoing finished images.
"""

import sys

from anomseg.cli import eval_main


def main(argv=None) -> int:
    return eval_main(argv)


if __name__ == "__main__":
    sys.exit(main())
