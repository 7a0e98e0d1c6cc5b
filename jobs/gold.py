"""spark-submit entry point: `spark-submit --packages <delta> jobs/gold.py [--full]`."""

import sys

from lakeward.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], job="gold"))
