"""The medallion jobs: which dates each stage takes, in what order, with one log line per stage.

The CLI and the spark-submit entry points both call these functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakeward import bronze, incremental, quality, silver, tables
from lakeward.config import Settings
from lakeward.privacy.keys import pii_key
from lakeward.sources.bitebridge import SOURCES, arrival_days

log = logging.getLogger(__name__)

STAGES = ("bronze", "silver", "gold", "all")


@dataclass(frozen=True)
class DateSelection:
    """``--date D`` (one arrival date) or ``--all-dates`` (everything pending).

    ``full`` recomputes gold from silver instead of applying the increment.
    """

    day: date | None = None
    full: bool = False

    @property
    def all_dates(self) -> bool:
        """True for ``--all-dates``."""
        return self.day is None


def ensure_tables(spark: SparkSession, settings: Settings) -> None:
    """Create every table the pipeline writes, so all of them are queryable from the start."""
    specs = [
        *bronze.table_specs(settings),
        *silver.table_specs(settings),
        *incremental.table_specs(settings),
        quality.result_spec(settings),
    ]
    tables.ensure_tables(spark, specs)


def run(spark: SparkSession, settings: Settings, stage: str, selection: DateSelection) -> None:
    """Run one stage, or all of them in order, for the selected dates."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if stage in ("silver", "all"):
        quality.preload()
    ensure_tables(spark, settings)
    if stage in ("bronze", "all"):
        run_bronze(spark, settings, selection)
    if stage in ("silver", "all"):
        run_silver(spark, settings, selection)
    if stage in ("gold", "all"):
        run_gold(spark, settings, selection)


def run_bronze(
    spark: SparkSession, settings: Settings, selection: DateSelection
) -> list[bronze.IngestResult]:
    """Ingest landing files of the selected arrival dates."""
    days = arrival_days(settings.landing_dir) if settings.landing_dir.exists() else []
    if selection.day is not None:
        if selection.day not in days:
            raise bronze.NoLandingDataError(
                f"no landing files for {selection.day} under {settings.landing_dir}"
            )
        days = [selection.day]
    elif not days:
        raise bronze.NoLandingDataError(
            f"no landing files under {settings.landing_dir}; run `lakeward generate` first"
        )
    log.info("bronze: %d arrival date(s) %s..%s", len(days), days[0], days[-1])
    return bronze.ingest_sources(spark, settings, list(SOURCES), days)


def run_silver(
    spark: SparkSession, settings: Settings, selection: DateSelection
) -> list[silver.SilverResult]:
    """Move bronze rows of the selected (or every not yet processed) arrival date into silver."""
    key = pii_key(settings)
    pending = _silver_dates(spark, settings, selection)
    for source in SOURCES:
        if not pending[source]:
            log.info("silver %s: nothing pending", source)
    return silver.process_sources(spark, settings, pending, key)


def _silver_dates(
    spark: SparkSession, settings: Settings, selection: DateSelection
) -> dict[str, Sequence[date]]:
    """Per source: the selected date, or the bronze arrival dates silver has not processed."""
    if selection.day is not None:
        return {source: [selection.day] for source in SOURCES}
    # One query for every source: bronze dates without a silver ledger row.
    in_bronze = reduce(
        DataFrame.unionByName,
        [
            tables.read(spark, settings.table(f"bronze_{source}"))
            .select(F.lit(source).alias("source"), F.col("_arrival_date").alias("arrival_date"))
            .filter(F.col("arrival_date").isNotNull())
            .distinct()
            for source in SOURCES
        ],
    )
    done = tables.read(spark, settings.table("ops_silver_batches")).select("source", "arrival_date")
    rows = in_bronze.join(done, ["source", "arrival_date"], "left_anti").collect()
    pending: dict[str, list[date]] = {source: [] for source in SOURCES}
    for row in rows:
        pending[row["source"]].append(row["arrival_date"])
    return {source: sorted(days) for source, days in pending.items()}


def run_gold(
    spark: SparkSession, settings: Settings, selection: DateSelection
) -> incremental.GoldResult:
    """Bring gold up to date with everything silver holds, or recompute it with ``full``.

    Gold follows silver, not the date: whatever silver received since the
    last gold run (on any arrival date) is applied.
    """
    return incremental.refresh(spark, settings, full=selection.full)
