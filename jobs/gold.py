"""spark-submit entry point: `spark-submit --packages <delta> jobs/gold.py [--full]`."""

import sys

from lakeward.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "gold", *sys.argv[1:]]))
