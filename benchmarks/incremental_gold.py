"""Benchmark incremental gold: one new arrival day on top of a long history, against ``--full``.

Silver comes from ``spark.range``: ``--users`` users with ``--events-per-day``
orders, deliveries and ratings each per day over ``--days`` arrival days, with 5% of
events arriving 1 to 3 days late, one arrival day per file as the daily pipeline
writes it. Each run uses fresh tables:

1. write silver for the first ``days - daily`` arrival days and run gold once
   (a full build; not timed);
2. append the next arrival day to silver (and its row to the silver ledger,
   as silver does, each its own commit) and time ``incremental.refresh``
   (the increment); repeat for each of the last ``--daily`` days (default 1),
   as a daily schedule would; the run's increment is the median of these;
3. time ``incremental.refresh(full=True)`` on the same silver (``--full``).

The script prints the median of ``--runs`` runs and the ratio::

    LAKEWARD_HOME=$(mktemp -d) .venv/bin/python benchmarks/incremental_gold.py \\
        --users 20000 --days 180 --events-per-day 2000 --runs 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from datetime import date, timedelta

from fresh_root import empty_data_root  # benchmarks/, first on sys.path
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakeward import incremental, silver, tables
from lakeward.config import Settings
from lakeward.session import get_spark

log = logging.getLogger("benchmarks.incremental_gold")

START = date(2025, 1, 1)
SILVER_SOURCES = ("order_placed", "delivery_completed", "rating_submitted")


def _hash(salt: int) -> Column:
    return F.xxhash64(F.col("id"), F.lit(salt))


def _events(spark: SparkSession, users: int, days: int, per_day: int, offset: int) -> DataFrame:
    total = days * per_day
    arrival = F.date_add(F.lit(START), (F.col("id") / per_day).cast("int"))
    late = F.when(F.pmod(_hash(3), F.lit(20)) == 0, 1 + F.pmod(_hash(4), F.lit(3))).otherwise(0)
    event_date = F.date_sub(arrival, late.cast("int"))
    return spark.range(total).select(
        F.concat(F.lit(f"e{offset}-"), F.col("id").cast("string")).alias("event_id"),
        F.to_timestamp(event_date).alias("event_ts"),
        event_date.alias("event_date"),
        F.concat(F.lit("u"), F.pmod(_hash(1), F.lit(users)).cast("string")).alias("user_key"),
        (F.pmod(_hash(2), F.lit(5000)) / 100).cast("decimal(12,2)").alias("amount"),
        F.lit(30).alias("promised_minutes"),
        (20 + F.pmod(_hash(5), F.lit(20))).cast("int").alias("actual_minutes"),
        (1 + F.pmod(_hash(6), F.lit(5))).cast("int").alias("rating"),
        arrival.alias("_arrival_date"),
        F.current_timestamp().alias("_ingested_at"),
        F.lit("bench").alias("_batch_id"),
    )


def _write_silver(
    spark: SparkSession, settings: Settings, events: dict[str, DataFrame], keep: Column, days: int
) -> None:
    for logical, df in events.items():
        name = settings.table(logical)
        columns = tables.read(spark, name).schema
        selected = df.filter(keep).select(
            *[F.col(f.name).cast(f.dataType) if f.name in df.columns
              else F.lit(None).cast(f.dataType).alias(f.name) for f in columns.fields]
        )
        # One arrival day per file, as the daily pipeline lays silver out.
        tables.append(selected.repartitionByRange(days, "_arrival_date"), name)


def _record_processed(spark: SparkSession, settings: Settings, days: list[date]) -> None:
    """The silver ledger rows that mark these arrival days processed, which gold reads for its as-of day."""
    rows = [(source, day, f"{source}-{day}", 0, 0, 0, 0, None, None)
            for source in SILVER_SOURCES for day in days]
    tables.append(spark.createDataFrame(rows, silver.LEDGER_SCHEMA), settings.table("ops_silver_batches"))


def _one_run(spark: SparkSession, base: Settings, args: argparse.Namespace) -> tuple[float, float, int]:
    settings = base.with_schema_suffix(uuid.uuid4().hex[:8])
    silver.ensure_tables(spark, settings)
    events = {
        logical: _events(spark, args.users, args.days, args.events_per_day, i)
        for i, logical in enumerate(incremental.SILVER_EVENTS)
    }
    history = args.days - args.daily
    first_new = START + timedelta(days=history)
    _write_silver(spark, settings, events, F.col("_arrival_date") < F.lit(first_new), history)
    _record_processed(spark, settings, [START + timedelta(days=d) for d in range(history)])
    incremental.refresh(spark, settings)
    increments = []
    for offset in range(args.daily):
        day = first_new + timedelta(days=offset)
        _write_silver(spark, settings, events, F.col("_arrival_date") == F.lit(day), 1)
        _record_processed(spark, settings, [day])
        began = time.perf_counter()
        result = incremental.refresh(spark, settings)
        increments.append(time.perf_counter() - began)
        assert result.mode == "incremental", result
        log.info("increment for %s: %.2fs (%d feature rows)",
                 day, increments[-1], result.feature_rows_written)
    increment = statistics.median(increments)
    if args.daily > 1:
        half = args.daily // 2
        log.info("increments: median %.2fs, first %d %.2fs, last %d %.2fs, min %.2fs, max %.2fs",
                 increment, half, statistics.median(increments[:half]), args.daily - half,
                 statistics.median(increments[half:]), min(increments), max(increments))
    began = time.perf_counter()
    full = incremental.refresh(spark, settings, full=True)
    recompute = time.perf_counter() - began
    log.info("run: increment %.1fs, full %.1fs (%d feature rows)",
             increment, recompute, full.feature_rows_written)
    return increment, recompute, full.feature_rows_written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--events-per-day", type=int, default=2000, help="per source")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--daily", type=int, default=1,
                        help="the last N arrival days come one at a time, each its own increment")
    args = parser.parse_args()
    if not 1 <= args.daily < args.days:
        parser.error("--daily must be at least 1 and less than --days")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    settings = empty_data_root()
    spark_settings = settings.spark.model_copy(update={"master": args.master})
    settings = settings.model_copy(update={"spark": spark_settings})
    spark = get_spark(settings)
    runs = [_one_run(spark, settings, args) for _ in range(args.runs)]
    increment = statistics.median(r[0] for r in runs)
    recompute = statistics.median(r[1] for r in runs)
    events = 3 * args.days * args.events_per_day
    print(f"users={args.users} days={args.days} silver events={events:,} feature rows={runs[0][2]:,}")
    print(f"runs (s): increment {' / '.join(f'{r[0]:.1f}' for r in runs)}; "
          f"full {' / '.join(f'{r[1]:.1f}' for r in runs)}")
    print("| variant | median wall (s) | share of --full |")
    print("| --- | --- | --- |")
    label = "1 new day" if args.daily == 1 else f"1 new day, median of {args.daily} days in a row"
    print(f"| increment ({label}) | {increment:.1f} | {increment / recompute:.1%} |")
    print(f"| --full | {recompute:.1f} | 100% |")


if __name__ == "__main__":
    main()
