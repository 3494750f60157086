"""Build (or reuse) the feature bank and train / fit per-pixel heads, selecting on validation AUROC.

    python tools/train_head.py --config configs/heads_synthetic_tiny.yaml [key.sub=value ...]

Writes the resolved config, the banks, and per head its best and last checkpoints and training log.
"""

from __future__ import annotations

import argparse
import sys

from anomseg.config import load_config
from anomseg.distributed import cleanup
from anomseg.errors import AnomsegError
from anomseg.heads.pipeline import DEFAULTS, run_head_training


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train per-pixel anomaly heads on a feature bank.")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=500")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides, DEFAULTS)
        run_head_training(cfg)
    except AnomsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
