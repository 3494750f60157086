"""Check a dataset download against the official layout and counts (``anomseg data check``).

    python tools/data_check.py check cityscapes /data/cityscapes [--split test] [--quick]

One line per problem with the archive to extract, or one line saying the set is complete (anomseg/data/check.py).
"""

import sys

from anomseg.cli import data_main


def main(argv=None) -> int:
    return data_main(argv)


if __name__ == "__main__":
    sys.exit(main())
