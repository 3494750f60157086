"""Overlay panels of a finished evaluation, and its report.html rewritten (``anomseg visualize``).

    python tools/visualize.py runs/eval_synthetic_tiny --images 0 5 12 [--threshold best_f1|tpr95|0.5|top5%] [--out DIR]
    python tools/visualize.py runs/eval_synthetic_tiny --first 8

``best_f1`` (the default) uses each method's best-F1 pixel threshold on the evaluated split, ``tpr95`` its
TPR-95 threshold (both from report.json).
"""

import sys

from anomseg.cli import visualize_main


def main(argv=None) -> int:
    return visualize_main(argv)


if __name__ == "__main__":
    sys.exit(main())
