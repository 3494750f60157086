"""Train a segmenter (``anomseg train-seg``): ``python tools/train_seg.py --config configs/seg_synthetic_tiny.yaml [key.sub=value ...]``.

Runs unchanged under ``torchrun --nproc_per_node=N tools/train_seg.py --config ...`` (gloo on CPU,
NCCL on GPU). Resumes from ``<out>/checkpoints/last.pth`` when it exists.
"""

import sys

from anomseg.cli import train_seg_main


def main(argv=None) -> int:
    return train_seg_main(argv)


if __name__ == "__main__":
    sys.exit(main())
