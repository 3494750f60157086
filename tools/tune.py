"""Search a stage config's hyperparameters with Optuna, selecting on validation AUROC.

    python tools/tune.py --config configs/tune_opengan_lambda_g.yaml [key.sub=value ...]

Writes <out>/trials.csv, <out>/best.yaml and the SQLite study (a killed search resumes).
"""

from __future__ import annotations

import argparse
import sys

from anomseg.config import load_config
from anomseg.errors import AnomsegError
from anomseg.tune import run_tuning


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Tune hyperparameters on validation AUROC (Optuna).")
    p.add_argument("--config", required=True, help="tuning config (see configs/tune_*.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the tuning config")
    a = p.parse_args(argv)
    try:
        result = run_tuning(load_config(a.config, a.overrides))
    except (AnomsegError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"best validation AUROC {result['best_value']:.4f} with {result['best_params']} ({result['trials']} trials)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
