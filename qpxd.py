#!/usr/bin/env python3
"""Entry point: ``python qpxd.py -c etc/qpx.yaml`` is the same as the ``qpxd`` console script."""

import sys

from qpx.cli import main

if __name__ == "__main__":
    sys.exit(main())
