"""What Delta's column statistics cost a write: a feature-history-shaped table, three ways.

Rows shaped like ``gold.user_features`` (14 columns: user key, date, timestamp, counts,
three DECIMAL(22,2) sums) are cached once, then appended to three fresh tables in
turn, ``--runs`` rounds (new tables each round), in one process:

- ``default``: Delta's default, statistics on the first 32 columns (here all 14);
- ``named``: the ``delta.dataSkippingStatsColumns`` that ``gold.user_features`` sets
  (user key, date, timestamp);
- ``none``: ``delta.dataSkippingNumIndexedCols = 0``, row counts only.

The first round warms the JVM and is left out of the medians::

    LAKEWARD_HOME=$(mktemp -d) PYSPARK_SUBMIT_ARGS="--driver-memory 6g pyspark-shell" \\
        .venv/bin/python benchmarks/write_stats.py --rows 3200000 --runs 4
"""

from __future__ import annotations

import argparse
import statistics
import time

from fresh_root import empty_data_root  # benchmarks/, first on sys.path
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakeward import gold, tables
from lakeward.config import Settings
from lakeward.session import get_spark

STATS_COLUMNS = "delta.dataSkippingStatsColumns"


def variants(settings: Settings) -> dict[str, dict[str, str]]:
    """Table properties per variant; ``named`` is what ``gold.user_features`` sets."""
    named = gold.user_features_spec(settings).delta_properties()[STATS_COLUMNS]
    return {
        "default": {},
        "named": {STATS_COLUMNS: named},
        "none": {"delta.dataSkippingNumIndexedCols": "0"},
    }


def feature_rows(spark: SparkSession, rows: int, users: int) -> DataFrame:
    """``rows`` rows in the shape of the feature history, ``users`` keys, one date per user block."""
    row_id = F.col("id")
    return spark.range(rows).select(
        F.sha2((row_id % users).cast("string"), 256).alias("user_key"),
        F.date_add(F.lit("2026-01-01").cast("date"), (row_id / users).cast("int")).alias("feature_date"),
        F.current_timestamp().alias("feature_ts"),
        *[(row_id % 7).alias(f"orders_{w}d") for w in (7, 30, 90)],
        *[((row_id % 1000) / 10).cast("decimal(22,2)").alias(f"spend_{w}d") for w in (7, 30, 90)],
        (row_id % 3).alias("late_deliveries_30d"),
        (row_id % 100).cast("int").alias("days_since_last_order"),
        (row_id % 5).alias("rating_count"),
        (row_id % 5 / 1.3).alias("mean_rating"),
        F.lit("v1").alias("feature_version"),
    )


def timed_append(spark: SparkSession, df: DataFrame, name: str, properties: dict[str, str]) -> float:
    """Seconds to append ``df`` to a new, empty table ``name`` carrying ``properties``."""
    spec = tables.TableSpec(name, df.schema, properties=properties)
    tables.ensure_table(spark, spec)
    start = time.perf_counter()
    tables.append(df, name)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_200_000)
    parser.add_argument("--users", type=int, default=25_000)
    parser.add_argument("--runs", type=int, default=4,
                        help="rounds; the first warms the JVM and is left out of the medians (at least 2)")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2: the first round is a warm-up")
    settings = empty_data_root()
    spark = get_spark(settings)
    df = feature_rows(spark, args.rows, args.users).cache()
    df.count()
    properties_of = variants(settings)
    seconds: dict[str, list[float]] = {name: [] for name in properties_of}
    for round_no in range(args.runs):
        for name, properties in properties_of.items():
            seconds[name].append(timed_append(spark, df, f"bench.write_stats_{name}_{round_no}", properties))
            print(f"round {round_no}: {name} {seconds[name][-1]:.2f} s", flush=True)
    baseline = statistics.median(seconds["default"][1:])
    print("| statistics | median append (s) | against default |")
    print("| --- | --- | --- |")
    for name, values in seconds.items():
        median = statistics.median(values[1:])
        print(f"| {name} | {median:.2f} | {median / baseline:.2f} |")


if __name__ == "__main__":
    main()
