"""spark-submit entry point of `lakeward dp-sweep`, with its options.

    spark-submit --packages <delta> jobs/dp_sweep.py [options]
"""

import sys

from lakeward.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], job="dp-sweep"))
