"""``python -m lcie_fast``: the same command line as ``lcie-fast``."""

import sys

from .cli import main

sys.exit(main())
