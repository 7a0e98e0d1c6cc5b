"""``python -m lakeward``: the ``lakeward`` command, for where the console script is not on PATH."""

import sys

from lakeward.cli import main

if __name__ == "__main__":
    sys.exit(main())
