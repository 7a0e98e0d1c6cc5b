"""The same pipeline run again and again in one driver: wall time and code generated per run.

Generates a small BiteBridge landing set once, then runs ``lakeward run all`` on
it ``--runs`` times, each time into a fresh set of tables, in one SparkSession.
For each run it prints the wall time and how many classes Spark's code
generator compiled (Janino compilations, from Spark's ``CodegenMetrics``). A
run whose queries were planned before compiles only what Spark's cache of
generated code no longer holds (``spark.sql.codegen.cache.maxEntries``).

    LAKEWARD_HOME=$(mktemp -d) .venv/bin/python benchmarks/repeated_runs.py --runs 3
    LAKEWARD_HOME=$(mktemp -d) .venv/bin/python benchmarks/repeated_runs.py --runs 3 --cache-entries 100

This is the situation of the test suite, which runs the same jobs on many small
table sets, and of any driver that runs more than one job.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from datetime import date

from fresh_root import empty_data_root  # benchmarks/, first on sys.path

from lakeward import pipeline
from lakeward.pipeline import DateSelection
from lakeward.session import get_spark
from lakeward.sources.bitebridge import generate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--cache-entries", type=int, default=None,
                        help="spark.sql.codegen.cache.maxEntries (default: the configured value)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = empty_data_root()
    conf = dict(settings.spark.conf)
    if args.cache_entries is not None:
        conf["spark.sql.codegen.cache.maxEntries"] = str(args.cache_entries)
    settings = settings.model_copy(
        update={"spark": settings.spark.model_copy(update={"master": args.master, "conf": conf})}
    )
    spark = get_spark(settings)
    generate(settings.landing_dir, seed=3, users=args.users, days=args.days, start=date(2026, 4, 1))
    compilations = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()  # type: ignore[union-attr]
    print(f"spark.sql.codegen.cache.maxEntries={spark.conf.get('spark.sql.codegen.cache.maxEntries')}")
    print("| run | wall (s) | classes compiled |")
    print("| --- | --- | --- |")
    for run in range(1, args.runs + 1):
        before, began = compilations.getCount(), time.perf_counter()
        pipeline.run(spark, settings.with_schema_suffix(uuid.uuid4().hex[:8]), "all", DateSelection())
        wall, compiled = time.perf_counter() - began, compilations.getCount() - before
        print(f"| {run} | {wall:.1f} | {compiled} |", flush=True)


if __name__ == "__main__":
    main()
