"""Generate the synthetic street-scene dataset: ``python datasets/make_synthetic.py ROOT [--seed N]``.

A thin wrapper over :func:`anomseg.data.generate_synthetic`; ``--help`` lists the options.
"""

import sys

from anomseg.data.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
