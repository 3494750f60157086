"""The released checkpoints anomseg loads, and which one a file is (``anomseg zoo``).

    python tools/zoo.py                          # every release: host, licence, config, published numbers
    python tools/zoo.py check model_final.pth    # which release a file is (key layout, shapes, hash)
"""

import sys

from anomseg.cli import zoo_main


def main(argv=None) -> int:
    return zoo_main(argv)


if __name__ == "__main__":
    sys.exit(main())
