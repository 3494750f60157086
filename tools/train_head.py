"""Build (or reuse) the feature bank and train / fit per-pixel heads, selecting on validation AUROC.

    python tools/train_head.py --config configs/heads_synthetic_tiny.yaml [key.sub=value ...]

Writes the resolved config, the banks, and per head its best and last checkpoints and training log.
"""

import sys

from anomseg.cli import config_tool
from anomseg.engine.train_heads import DEFAULTS, SCHEMA, run_head_training


def main(argv=None) -> int:
    return config_tool("Train per-pixel anomaly heads on a feature bank.", run_head_training, DEFAULTS, argv, schema=SCHEMA)


if __name__ == "__main__":
    sys.exit(main())
