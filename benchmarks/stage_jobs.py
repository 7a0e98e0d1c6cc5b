"""What one arrival day costs per pipeline stage: wall time and Spark jobs, by call site.

Generates a small BiteBridge landing set (the generator's default faults), then runs
each arrival day in order, stage by stage (bronze, silver, gold), in one driver. For
each stage of each day it prints the wall time and how many Spark jobs it started;
with ``--sites`` also the last day's jobs grouped by where they were started (Delta's
job description, if any, and the call site Spark records), with their summed time.

    LAKEWARD_HOME=$(mktemp -d) .venv/bin/python benchmarks/stage_jobs.py --days 3 --sites

On tiny data a stage's time is its number of jobs times what a job costs (planning,
scheduling, a Delta snapshot), not its rows: this shows where the jobs come from.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from datetime import date, timedelta
from typing import Any

from fresh_root import empty_data_root  # benchmarks/, first on sys.path
from pyspark.sql import SparkSession

from lakeward import pipeline
from lakeward.pipeline import DateSelection
from lakeward.session import get_spark
from lakeward.sources.bitebridge import generate

START = date(2026, 3, 1)


def _jobs_after(spark: SparkSession, first: int) -> list[Any]:
    """Spark's records (``JobData``) of the jobs with an id above ``first``."""
    jobs = spark.sparkContext._jsc.sc().statusStore().jobsList(None)  # type: ignore[union-attr]
    found, it = [], jobs.iterator()
    while it.hasNext():
        job = it.next()
        if job.jobId() > first:
            found.append(job)
    return found


def _last_job_id(spark: SparkSession) -> int:
    return max((job.jobId() for job in _jobs_after(spark, -1)), default=-1)


def _sites(jobs: list[Any]) -> list[tuple[str, int, float]]:
    """(site, jobs, seconds) per call site, most jobs first."""
    count: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for job in jobs:
        description = job.description().get() if job.description().isDefined() else ""
        site = f"{description[:70]} | {job.name()[:90]}".strip(" |")
        count[site] += 1
        if job.submissionTime().isDefined() and job.completionTime().isDefined():
            elapsed = job.completionTime().get().getTime() - job.submissionTime().get().getTime()
            seconds[site] += elapsed / 1000
    return [(site, n, seconds[site]) for site, n in count.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--sites", action="store_true", help="the last day's jobs by call site")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = empty_data_root()
    generate(settings.landing_dir, seed=11, users=args.users, days=args.days, start=START)
    spark = get_spark(settings)
    print("| day | stage | wall (s) | Spark jobs |")
    print("| --- | --- | --- | --- |")
    last: list[Any] = []
    for n in range(args.days):
        day = START + timedelta(days=n)
        for stage in ("bronze", "silver", "gold"):
            first, began = _last_job_id(spark), time.perf_counter()
            pipeline.run(spark, settings, stage, DateSelection(day))
            wall, jobs = time.perf_counter() - began, _jobs_after(spark, first)
            print(f"| {day} | {stage} | {wall:.1f} | {len(jobs)} |", flush=True)
            if n == args.days - 1:
                last += [(stage, job) for job in jobs]
    if args.sites:
        for stage in ("bronze", "silver", "gold"):
            print(f"\n{stage}, {START + timedelta(days=args.days - 1)}: jobs, seconds, site")
            for site, n, seconds in _sites([job for s, job in last if s == stage]):
                print(f"{n:4d} {seconds:6.1f}  {site}")


if __name__ == "__main__":
    main()
