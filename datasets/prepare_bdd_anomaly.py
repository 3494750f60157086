"""Write the BDD-Anomaly split lists: ``python datasets/prepare_bdd_anomaly.py BDD_ROOT``.

A thin wrapper over :func:`anomseg.data.prepare_bdd_anomaly`. BDD_ROOT is the extracted
``bdd100k/`` folder (newer layout) or the folder holding ``seg/`` (older layout); the lists go
to ``BDD_ROOT/bdd_anomaly/{train,val,test}.txt``. On the real 10K labels the counts are
6280 train / 910 val / 810 test.
"""

import argparse
import sys

from anomseg.data import prepare_bdd_anomaly
from anomseg.errors import AnomsegError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="BDD100K root (either layout)")
    p.add_argument("--labels-only", action="store_true", help="do not require the image files")
    a = p.parse_args(argv)
    try:
        c = prepare_bdd_anomaly(a.root, require_images=not a.labels_only)
    except AnomsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"BDD-Anomaly splits written to {a.root}/bdd_anomaly: train {c['train']} / val {c['val']} / "
          f"test {c['test']} ({c['test_from_train']} anomalous from train, {c['test_from_val']} from val)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
