"""Search a stage config's hyperparameters with Optuna, selecting on validation AUROC (``anomseg tune``).

    python tools/tune.py --config configs/tune_opengan_lambda_g.yaml [key.sub=value ...]

Writes <out>/trials.csv, <out>/best.yaml and the SQLite study (a killed search resumes).
"""

import sys

from anomseg.cli import tune_main


def main(argv=None) -> int:
    return tune_main(argv)


if __name__ == "__main__":
    sys.exit(main())
