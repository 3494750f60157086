"""Build (or reuse) the feature bank and train / fit per-pixel heads, selecting on validation AUROC
(``anomseg train-head``).

    python tools/train_head.py --config configs/heads_synthetic_tiny.yaml [key.sub=value ...]

Writes the resolved config, the banks, and per head its best and last checkpoints and training log.
"""

import sys

from anomseg.cli import train_head_main


def main(argv=None) -> int:
    return train_head_main(argv)


if __name__ == "__main__":
    sys.exit(main())
