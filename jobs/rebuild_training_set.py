"""spark-submit entry point of `lakeward rebuild-training-set`, with its options.

    spark-submit --packages <delta> jobs/rebuild_training_set.py [options]
"""

import sys

from lakeward.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], job="rebuild-training-set"))
