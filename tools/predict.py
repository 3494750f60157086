"""Score your own images, folders, globs, .txt lists and videos with a pipeline file (``anomseg predict``).

    python tools/predict.py --pipeline runs/demo/pipeline.pt photos/ "dashcam/*.jpg" drive.mp4 --out runs/predict
    python tools/predict.py --config my_eval.yaml --method max_logit --threshold 4.2 frames/ --out runs/p

Per frame a score map, a mask at the operating point and a panel; per video an overlay video; frames.csv and
index.html for the run. A rerun into the same --out skips what is written (anomseg/predict/run.py).
"""

import sys

from anomseg.cli import predict_main


def main(argv=None) -> int:
    return predict_main(argv)


if __name__ == "__main__":
    sys.exit(main())
