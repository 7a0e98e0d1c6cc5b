"""spark-submit entry point of `lakeward train`, with its options.

    spark-submit --packages <delta> jobs/train.py [options]
"""

import sys

from lakeward.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], job="train"))
