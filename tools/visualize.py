"""Overlay panels of a finished evaluation: input, ground truth, and per method its heat map and
thresholded anomaly map.

    python tools/visualize.py runs/eval_synthetic_tiny --images 0 5 12 [--threshold tpr95|0.5|top5%] [--out DIR]
    python tools/visualize.py runs/eval_synthetic_tiny --first 8

``tpr95`` uses each method's TPR-95 threshold on the evaluated split (from report.json).
"""

from __future__ import annotations

import argparse
import sys

from anomseg.errors import AnomsegError
from anomseg.engine.evaluate import render_overlays


def threshold_arg(text: str):
    if text == "tpr95" or (text.startswith("top") and text.endswith("%")):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold {text!r}: give tpr95, a number, or topK% (e.g. top5%)") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write overlay panels for images of an evaluation.")
    p.add_argument("eval_dir", help="an eval_caos.py output folder (holds report.json)")
    p.add_argument("--images", type=int, nargs="*", default=None, help="image indices of the evaluated split")
    p.add_argument("--first", type=int, default=8, help="without --images: the first N images")
    p.add_argument("--threshold", type=threshold_arg, default="tpr95")
    p.add_argument("--out", default=None, help="output folder (default: <eval_dir>/overlays)")
    a = p.parse_args(argv)
    try:
        paths = render_overlays(a.eval_dir, a.images if a.images is not None else range(a.first), a.threshold, a.out)
    except (AnomsegError, FileNotFoundError, IndexError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} panels to {paths[0].parent if paths else a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
