"""spark-submit entry point of `lakeward predict`, with its options.

    spark-submit --packages <delta> jobs/predict.py [options]
"""

import sys

from lakeward.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], job="predict"))
