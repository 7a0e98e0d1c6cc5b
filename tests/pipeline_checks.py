"""Checks shared by the pipeline tests: fault rates, row counts, the silver ledger, gold against --full."""

from __future__ import annotations

from datetime import date

from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward import pipeline, tables
from lakeward.config import Settings
from lakeward.pipeline import DateSelection
from lakeward.sources.bitebridge import FaultRates

FAULTS = FaultRates(duplicate=0.08, late=0.08, malformed=0.1, null_key=0.04, out_of_range=0.04)


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
