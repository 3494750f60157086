"""The README's main job (``anomseg demo``): the whole anomseg pipeline on the embedded synthetic street scenes.

    python tools/demo.py --out runs/demo [--full] [--seed 0] [--config demo] [key.sub=value ...]

Generates the data, trains a small segmenter on CPU, builds the feature bank, trains the heads, evaluates
the post-hoc, fitted, CORES and head scores, writes report.html (and report.json, overlays, curves) and
prints the table. ``--full`` runs the fuller profile (configs/demo_full.yaml). Every stage is skipped when
its output exists; a seed gives the same table.
"""

import sys

from anomseg.cli import demo_main


def main(argv=None) -> int:
    return demo_main(argv)


if __name__ == "__main__":
    sys.exit(main())
