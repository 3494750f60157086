"""Train a segmenter: ``python tools/train_seg.py --config configs/seg_synthetic_tiny.yaml [key.sub=value ...]``.

Runs unchanged under ``torchrun --nproc_per_node=N tools/train_seg.py --config ...`` (gloo on CPU,
NCCL on GPU). Resumes from ``<out>/checkpoints/last.pth`` when it exists.
"""

from __future__ import annotations

import argparse
import sys

from anomseg.config import load_config
from anomseg.distributed import cleanup
from anomseg.errors import AnomsegError
from anomseg.train import SEG_DEFAULTS, train_segmentation


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train a segmentation backbone.")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=2 out=runs/x")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides, SEG_DEFAULTS)
        train_segmentation(cfg)
    except AnomsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
