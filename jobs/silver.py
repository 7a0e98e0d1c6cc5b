"""spark-submit entry point: `spark-submit --packages <delta> jobs/silver.py [--date D | --all-dates]`."""

import sys

from lakeward.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], job="silver"))
