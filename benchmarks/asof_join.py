"""Benchmark lakeward.pit.as_of_join against a naive range join and a plain equi-join.

All data comes from ``spark.range`` (no Python rows). Each variant is forced
with the ``noop`` sink; the median of ``--runs`` runs is printed as a markdown
table row, with ratios to the equi-join (the cost floor of any key join)::

    LAKEWARD_HOME=$(mktemp -d) .venv/bin/python benchmarks/asof_join.py \\
        --labels 10000 --keys 1000 --features-per-key 100 --runs 3 [--skew] [--wide]

Variants:
    as_of   as_of_join(labels, features, keys=["key"], ...)
    naive   left join on key and feature_ts <= label_ts, row_number over the
            label id ordered by feature_ts desc, keep row 1
    equi    labels left-joined to the same feature rows on key and exact
            timestamp: the same keys, the same sizes and one shuffle per side,
            the cost floor of any join between the two tables

``--skew`` puts 10% of all label and feature rows on key 0. The ``rows/task``
column is max/median of label rows per partition of the as-of output (the
window's tasks), read via ``spark_partition_id``; with skew the hot key shows
up as one large task unless ``--time-buckets`` spreads it.

The naive join grows with labels x feature rows per key; under skew the hot
key alone pairs 10% of the labels with 10% of the features. Each naive run is
cancelled after ``--naive-timeout`` seconds and reported as "> limit".
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakeward.config import load_settings
from lakeward.pit import as_of_join
from lakeward.session import get_spark

log = logging.getLogger("benchmarks.asof_join")

START = int(datetime(2025, 1, 1).timestamp())
SPAN_SECONDS = 365 * 24 * 3600
HOT_SHARE = 10  # with --skew, 1 row in HOT_SHARE goes to key 0


def _hash(salt: int) -> Column:
    return F.xxhash64(F.col("id"), F.lit(salt))


def _key(keys: int, skew: bool) -> Column:
    uniform = F.pmod(_hash(1), F.lit(keys))
    if not skew:
        return uniform
    hot = F.pmod(_hash(2), F.lit(HOT_SHARE)) == 0
    return F.when(hot, F.lit(0)).otherwise(1 + F.pmod(_hash(1), F.lit(keys - 1)))


def _ts() -> Column:
    return F.timestamp_seconds(F.lit(START) + F.pmod(_hash(3), F.lit(SPAN_SECONDS)))


def _feature_values(wide: bool) -> list[Column]:
    count = 120 if wide else 10
    return [(F.pmod(_hash(100 + i), F.lit(10_000)) / 100.0).alias(f"f{i}") for i in range(count)]


def build_labels(spark: SparkSession, n: int, keys: int, skew: bool) -> DataFrame:
    return spark.range(n).select(
        F.col("id").alias("label_id"),
        _key(keys, skew).alias("key"),
        _ts().alias("label_ts"),
        (F.col("id") % 2).alias("y"),
    )


def build_features(spark: SparkSession, n: int, keys: int, skew: bool, wide: bool) -> DataFrame:
    return spark.range(n).select(
        _key(keys, skew).alias("key"), _ts().alias("feature_ts"), *_feature_values(wide)
    )


def equi_join(labels: DataFrame, features: DataFrame) -> DataFrame:
    feats = features.withColumnRenamed("key", "f_key")
    exact = (labels["key"] == feats["f_key"]) & (labels["label_ts"] == feats["feature_ts"])
    return labels.join(feats, exact, "left")


def naive_as_of(labels: DataFrame, features: DataFrame) -> DataFrame:
    feats = features.withColumnRenamed("key", "f_key")
    joined = labels.join(
        feats,
        (labels["key"] == feats["f_key"]) & (feats["feature_ts"] <= labels["label_ts"]),
        "left",
    )
    newest = Window.partitionBy("label_id").orderBy(F.col("feature_ts").desc_nulls_last())
    return (
        joined.withColumn("_rn", F.row_number().over(newest))
        .where(F.col("_rn") == 1)
        .drop("_rn", "f_key")
    )


def timed(
    name: str, build: Callable[[], DataFrame], runs: int, limit: float | None = None
) -> float:
    """Median seconds of ``runs`` runs; ``inf`` when a run hits ``limit`` (it is cancelled)."""
    times = []
    for run in range(runs):
        spark = build().sparkSession
        spark.sparkContext.setJobGroup(name, name, interruptOnCancel=True)
        timer = threading.Timer(limit, spark.sparkContext.cancelJobGroup, [name]) if limit else None
        if timer:
            timer.start()
        started = time.perf_counter()
        try:
            build().write.format("noop").mode("overwrite").save()
        except Exception:  # noqa: BLE001 - the cancellation surfaces as a generic Spark error
            if timer is None or timer.is_alive():
                raise
            log.info("%s run %d: cancelled after %.0f s", name, run + 1, limit)
            return float("inf")
        finally:
            if timer:
                timer.cancel()
        times.append(time.perf_counter() - started)
        if limit and times[-1] >= limit:
            # The cancel found no job to stop (it fired while the query was still being
            # planned); the run still took longer than the limit, so it reports as one.
            log.info("%s run %d: %.2f s, over the limit of %.0f s", name, run + 1, times[-1], limit)
            return float("inf")
        log.info("%s run %d: %.2f s", name, run + 1, times[-1])
    return statistics.median(times)


def task_balance(spark: SparkSession, result: Callable[[], DataFrame]) -> str:
    """Max/median label rows per window task, without AQE merging small partitions."""
    coalesce = "spark.sql.adaptive.coalescePartitions.enabled"
    before = spark.conf.get(coalesce) or "true"
    spark.conf.set(coalesce, "false")
    try:
        frame = result()
        # Aggregate a feature column too, or column pruning drops the window.
        per_task = (
            frame.groupBy(F.spark_partition_id().alias("p"))
            .agg(F.count("*").alias("rows"), F.count(frame.columns[-1]).alias("matched"))
            .collect()
        )
    finally:
        spark.conf.set(coalesce, before)
    counts = [r["rows"] for r in per_task]
    return f"{max(counts)}/{statistics.median(counts):.0f} ({len(counts)} tasks)"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=int, default=10_000)
    parser.add_argument("--features-per-key", type=int, default=100)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--skew", action="store_true", help="10%% of rows on one key")
    parser.add_argument("--wide", action="store_true", help="120 feature columns instead of 10")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--time-buckets", type=int, default=None, help="pass time_buckets= to as_of_join"
    )
    parser.add_argument(
        "--prefilter", choices=["auto", "on", "off"], default="auto",
        help="pass prefilter= to as_of_join (auto: on for wide feature columns)",
    )
    parser.add_argument(
        "--skip-naive",
        action="store_true",
        help="the naive join grows with labels x features per key",
    )
    parser.add_argument("--naive-timeout", type=float, default=900.0, help="seconds per naive run")
    parser.add_argument("--master", default=None, help="e.g. local[2]; default from settings")
    parser.add_argument("--shuffle-partitions", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="lakeward-bench-") as home:
        settings = load_settings("local", data_root=Path(home))
        conf = dict(settings.spark.conf)
        if args.shuffle_partitions:
            conf["spark.sql.shuffle.partitions"] = str(args.shuffle_partitions)
        update: dict[str, object] = {"conf": conf}
        if args.master:
            update["master"] = args.master
        settings = settings.model_copy(update={"spark": settings.spark.model_copy(update=update)})
        spark = get_spark(settings)
        try:
            print(run(spark, args))
        finally:
            spark.stop()
    return 0


def run(spark: SparkSession, args: argparse.Namespace) -> str:
    n_features = args.keys * args.features_per_key
    labels = build_labels(spark, args.labels, args.keys, args.skew)
    features = build_features(spark, n_features, args.keys, args.skew, args.wide)

    def as_of() -> DataFrame:
        return as_of_join(
            labels,
            features,
            keys=["key"],
            label_ts="label_ts",
            feature_ts="feature_ts",
            time_buckets=args.time_buckets,
            prefilter={"auto": None, "on": True, "off": False}[args.prefilter],
        )

    log.info("warm-up")
    as_of().write.format("noop").mode("overwrite").save()
    t_asof = timed("as_of", as_of, args.runs)
    t_naive = (
        float("nan")
        if args.skip_naive
        else timed("naive", lambda: naive_as_of(labels, features), args.runs, args.naive_timeout)
    )
    t_equi = timed("equi", lambda: equi_join(labels, features), args.runs)
    balance = task_balance(spark, as_of)

    header = (
        "| labels | features | keys | skew | wide | buckets | prefilter | as_of s | naive s | equi s "
        "| as_of/equi | naive/equi | as_of/naive | label rows/task max/median |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    row = (
        f"| {args.labels:,} | {n_features:,} | {args.keys:,} | {'yes' if args.skew else 'no'} "
        f"| {'120 cols' if args.wide else '10 cols'} | {args.time_buckets or '-'} | {args.prefilter} "
        f"| {t_asof:.2f} | {_seconds(t_naive, args.naive_timeout)} | {t_equi:.2f} "
        f"| {t_asof / t_equi:.1f}x | {_ratio(t_naive, t_equi)} | {_ratio(t_asof, t_naive, 2)} "
        f"| {balance} |"
    )
    return f"{header}\n{row}"


def _seconds(value: float, limit: float) -> str:
    return f"> {limit:.0f}" if value == float("inf") else f"{value:.2f}"


def _ratio(num: float, den: float, digits: int = 1) -> str:
    """``num / den``; a cancelled run (``inf``) gives a bound instead of a value."""
    if num == float("inf"):
        return "> limit"
    if den == float("inf"):
        return "< limit"
    return f"{num / den:.{digits}f}" + ("x" if digits == 1 else "")


if __name__ == "__main__":
    sys.exit(main())
