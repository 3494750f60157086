"""Train a segmenter: ``python tools/train_seg.py --config configs/seg_synthetic_tiny.yaml [key.sub=value ...]``.

Runs unchanged under ``torchrun --nproc_per_node=N tools/train_seg.py --config ...`` (gloo on CPU,
NCCL on GPU). Resumes from ``<out>/checkpoints/last.pth`` when it exists.
"""

import sys

from anomseg.cli import config_tool
from anomseg.engine.train_seg import DEFAULTS as SEG_DEFAULTS, SCHEMA as SEG_SCHEMA, train_segmentation


def main(argv=None) -> int:
    return config_tool("Train a segmentation backbone.", train_segmentation, SEG_DEFAULTS, argv, schema=SEG_SCHEMA)


if __name__ == "__main__":
    sys.exit(main())
