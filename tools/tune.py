"""Search a stage config's hyperparameters with Optuna, selecting on validation AUROC.

    python tools/tune.py --config configs/tune_opengan_lambda_g.yaml [key.sub=value ...]

Writes <out>/trials.csv, <out>/best.yaml and the SQLite study (a killed search resumes).
"""

import sys

from anomseg.cli import config_tool
from anomseg.errors import AnomsegError
from anomseg.engine.tune import run_tuning


def tune_and_print(cfg: dict) -> None:
    r = run_tuning(cfg)
    print(f"best validation AUROC {r['best_value']:.4f} with {r['best_params']} ({r['trials']} trials)")


def main(argv=None) -> int:
    return config_tool("Tune hyperparameters on validation AUROC (Optuna).", tune_and_print, None, argv,
                       errors=(AnomsegError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
