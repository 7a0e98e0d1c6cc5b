"""Checks shared by the pipeline tests: fault rates, row counts, the silver ledger, gold against
--full, and the brute-force oracles of both gold tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward import pipeline, tables
from lakeward.config import Settings
from lakeward.pipeline import DateSelection
from lakeward.sources.bitebridge import FaultRates

FAULTS = FaultRates(duplicate=0.08, late=0.08, malformed=0.1, null_key=0.04, out_of_range=0.04)


def vacuum_everything_old(spark: SparkSession, name: str) -> None:
    """``VACUUM name LITE RETAIN 0 HOURS``, with Delta's retention check off for the call.

    LITE takes the files to delete from the log's remove actions instead of listing the
    table's directory: seconds where a full VACUUM takes a minute on a small machine. It
    is SQL only; the name is quoted by ``tables.quoted_name``.
    """
    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    spark.conf.set(check, "false")
    try:
        spark.sql(f"VACUUM {tables.quoted_name(name)} LITE RETAIN 0 HOURS")
    finally:
        spark.conf.unset(check)


def drop_table(spark: SparkSession, name: str) -> None:
    """``DROP TABLE`` ``schema.table``, data files included, through the session catalog.

    Not by SQL text: with Delta's extension, Spark 4.1 refuses a parameter in
    ``DROP TABLE IDENTIFIER(:name)`` (NOT_A_CONSTANT_STRING).
    """
    jvm = spark._jvm
    schema, table = name.split(".")
    spark._jsparkSession.sessionState().catalog().dropTable(
        jvm.org.apache.spark.sql.catalyst.TableIdentifier(table, jvm.scala.Some(schema)), False, False
    )


def count_rows(spark: SparkSession, settings: Settings, logical: str, **where: str) -> int:
    df = tables.read(spark, settings.table(logical))
    for column, value in where.items():
        df = df.filter(F.col(column) == value)
    return df.count()


def gold_equals_full(spark: SparkSession, settings: Settings) -> None:
    """Both gold tables, as the runs so far left them, equal ``lakeward run gold --full``."""
    gold_names = [settings.table(t) for t in ("gold_user_daily", "gold_user_features")]
    increment = {n: tables.read(spark, n, version=tables.current_version(spark, n)) for n in gold_names}
    assert pipeline.run_gold(spark, settings, DateSelection(full=True)).mode == "full"
    for name in gold_names:
        assert_df_equality(increment[name], tables.read(spark, name),
                           ignore_row_order=True, ignore_nullable=True)


def silver_ledger(spark: SparkSession, settings: Settings, source: str, day: date) -> list[tuple[int, ...]]:
    """Rows in, quarantined, duplicates and written of each silver ledger row of a source and day."""
    ledger = tables.read(spark, settings.table("ops_silver_batches")).filter(
        (F.col("source") == source) & (F.col("arrival_date") == day)
    )
    counts = ("rows_in", "rows_quarantined", "rows_duplicate", "rows_written")
    return [tuple(r) for r in ledger.orderBy("processed_at").select(*counts).collect()]


def features_oracle(
    orders: list, deliveries: list, ratings: list, as_of: date, windows: Sequence[int], version: str
) -> list[dict]:
    """``gold.user_features`` by brute force: one row per user and day from the first day
    something of theirs is known (the later of event and arrival day) up to ``as_of``."""

    def known(e: tuple) -> date:
        return max(e[1], e[2])

    rows = []
    users = {e[0] for e in orders + deliveries + ratings}
    for user in sorted(users):
        mine = [e for e in orders + deliveries + ratings if e[0] == user]
        first = min(known(e) for e in mine)
        day = first
        while day <= as_of:
            seen_orders = [e for e in orders if e[0] == user and known(e) <= day]
            row = {"user_key": user, "feature_date": day,
                   "feature_ts": datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=UTC)}
            for w in windows:
                inside = [e for e in seen_orders if day - timedelta(days=w - 1) <= e[1] <= day]
                row[f"orders_{w}d"] = len(inside)
                row[f"spend_{w}d"] = sum((e[3] for e in inside), Decimal(0))
            row["late_deliveries_30d"] = sum(
                1 for e in deliveries
                if e[0] == user and known(e) <= day and day - timedelta(days=29) <= e[1] <= day
                and e[4] is not None and e[4] > e[3]
            )
            last = max((e[1] for e in seen_orders), default=None)
            row["days_since_last_order"] = None if last is None else (day - last).days
            seen_ratings = [e[3] for e in ratings if e[0] == user and known(e) <= day and e[3] is not None]
            row["rating_count"] = len(seen_ratings)
            row["mean_rating"] = sum(seen_ratings) / len(seen_ratings) if seen_ratings else None
            row["feature_version"] = version
            rows.append(row)
            day += timedelta(days=1)
    return rows


def daily_oracle(orders: list, deliveries: list, ratings: list) -> list[tuple]:
    """``gold.user_daily`` by brute force: per user and event date, counts and sums."""
    days: dict[tuple, list] = {}

    def day(event: tuple) -> list:
        return days.setdefault((event[0], event[1]), [0, Decimal("0.00"), 0, 0, 0, 0])

    for user_order in orders:
        day(user_order)[0] += 1
        day(user_order)[1] += user_order[3]
    for delivery in deliveries:
        day(delivery)[2] += 1
        day(delivery)[3] += int(delivery[4] is not None and delivery[4] > delivery[3])
    for rating in ratings:
        day(rating)[4] += rating[3] is not None
        day(rating)[5] += rating[3] or 0
    return [(user, event_date, *v, v[5] / v[4] if v[4] else None)
            for (user, event_date), v in days.items()]
