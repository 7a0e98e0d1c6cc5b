"""The medallion jobs: which dates each stage takes, in what order, with one log line per stage.

The CLI and the spark-submit entry points both call these functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from pyspark.sql import SparkSession

from lakeward import bronze, incremental, interrupt, quality, silver, tables
from lakeward.config import Settings
from lakeward.privacy.keys import pii_key
from lakeward.sources.bitebridge import (
    GENERATING_MARKER,
    SOURCES,
    LandingScan,
    generation_interrupted,
    scan_landing,
    today_utc,
)

log = logging.getLogger(__name__)

STAGES = ("bronze", "silver", "gold", "all")


class NoBronzeDataError(LookupError):
    """Silver was asked for an arrival date that bronze has not ingested."""


class FutureDateError(bronze.NoLandingDataError):
    """A ``--date`` after today (UTC): nothing can have arrived on it yet."""


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


def table_specs(settings: Settings) -> list[tables.TableSpec]:
    """Every table the pipeline writes."""
    return [
        *bronze.table_specs(settings),
        *silver.table_specs(settings),
        *incremental.table_specs(settings),
        quality.result_spec(settings),
    ]


def ensure_tables(spark: SparkSession, settings: Settings) -> None:
    """Create every table the pipeline writes, so all of them are queryable from the start."""
    tables.ensure_tables(spark, table_specs(settings))


def run(spark: SparkSession, settings: Settings, stage: str, selection: DateSelection) -> None:
    """Run one stage, or all of them in order, for the selected dates.

    Every table the pipeline writes exists when this returns. Bronze touches
    only its own tables, so the others are created while it runs: creating a
    table is mostly driver-side work, which overlaps with bronze's Spark jobs.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    refuse_future(selection)
    if stage in ("silver", "all"):
        quality.preload()
    first = bronze.table_specs(settings) if stage in ("bronze", "all") else []
    tables.ensure_tables(spark, first)
    created = {spec.name for spec in first}
    rest = [spec for spec in table_specs(settings) if spec.name not in created]
    with interrupt.pool(1) as pool:
        others = pool.submit(tables.ensure_tables, spark, rest)
        if stage in ("bronze", "all"):
            run_bronze(spark, settings, selection)
        others.result()
    if stage in ("silver", "all"):
        run_silver(spark, settings, selection)
    if stage in ("gold", "all"):
        run_gold(spark, settings, selection)


def refuse_future(selection: DateSelection) -> None:
    """:class:`FutureDateError` for a ``--date`` after today (UTC), whatever the stage.

    A file cannot have arrived on a day still to come (arrival days are UTC
    days). Taken now, its events would pass silver's future check, which is
    relative to the arrival day, and gold would write every user's features up
    to that day.
    """
    today = today_utc()
    if selection.day is not None and selection.day > today:
        raise FutureDateError(
            f"{selection.day} is after today ({today}, UTC): its landing files are taken on that "
            "day or later, since nothing can have arrived on it yet"
        )


def bronze_landing(settings: Settings, selection: DateSelection) -> LandingScan:
    """The arrival days a bronze run takes, and the landing paths it leaves, from one listing.

    ``NoLandingDataError`` when there are no days to take. It reads only the
    landing directory, so the CLI asks it before starting Spark.
    """
    if generation_interrupted(settings.landing_dir):
        raise bronze.NoLandingDataError(
            f"the landing files under {settings.landing_dir} are incomplete: a `lakeward generate` "
            f"into it did not finish; run it again, or remove {GENERATING_MARKER} there "
            "to ingest them as they are"
        )
    refuse_future(selection)
    today = today_utc()
    # Files named for later days are held back (see refuse_future).
    scan = scan_landing(settings.landing_dir, until=today)
    if selection.day is not None:
        if selection.day not in scan.days:
            raise bronze.NoLandingDataError(
                f"no landing files for {selection.day} under {settings.landing_dir}"
                + _misnamed(settings, scan.unrecognized, "; ")
            )
        return replace(scan, days=[selection.day], ahead=[])
    if not scan.days:
        hint = _ahead(scan, today) if scan.ahead else "; run `lakeward generate` first"
        raise bronze.NoLandingDataError(
            f"no landing files under {settings.landing_dir}{hint}"
            + _misnamed(settings, scan.unrecognized, "; ")
        )
    return scan


def _ahead(scan: LandingScan, today: date) -> str:
    return (f" up to today ({today}, UTC): {len(scan.ahead)} arrival day(s) after it "
            f"({scan.ahead[0]}..{scan.ahead[-1]}) are held back until they come")


def run_bronze(
    spark: SparkSession, settings: Settings, selection: DateSelection
) -> list[bronze.IngestResult]:
    """Ingest landing files of the selected arrival dates."""
    landing = bronze_landing(settings, selection)
    # Rows a bronze table lost are restored, also by a dated run.
    restore = bronze.find_lost(spark, settings)
    days = sorted({*landing.days, *restore.dates})
    if landing.unrecognized:
        log.warning("bronze: %s", _misnamed(settings, landing.unrecognized, ""))
    if landing.ahead:
        log.warning("bronze: landing files%s", _ahead(landing, today_utc()))
    again = sorted(set(restore.dates) - set(landing.days))
    log.info("bronze: %d arrival date(s) %s..%s%s", len(days), days[0], days[-1],
             f", {len(again)} of them to write again what bronze lost" if again else "")
    results = bronze.ingest_sources(
        spark, settings, list(SOURCES), days, again=restore.batches, balanced=restore.balanced,
    )
    log.info(
        "bronze: done, %d file(s) ingested (%d already were), %d rows written, %d quarantined",
        sum(r.files - r.skipped for r in results), sum(r.skipped for r in results),
        sum(r.rows_written for r in results), sum(r.rows_quarantined for r in results),
    )
    return results


def _misnamed(settings: Settings, paths: Sequence[Path], lead: str) -> str:
    """``lead`` and the first landing paths no run takes, or nothing when there are none."""
    if not paths:
        return ""
    names = ", ".join(str(path.relative_to(settings.landing_dir)) for path in paths[:5])
    more = ", ..." if len(paths) > 5 else ""
    return (f"{lead}{len(paths)} landing path(s) not files named <source>/YYYY-MM-DD.jsonl, "
            f"so not ingested: {names}{more}")


def run_silver(
    spark: SparkSession, settings: Settings, selection: DateSelection
) -> list[silver.SilverResult]:
    """Move bronze rows of the selected (or every not yet processed) arrival date into silver."""
    key = pii_key(settings)
    lost = silver.forget_lost(spark, settings)
    work = _silver_work(spark, settings, selection)
    if lost and selection.day is not None:
        # A dated run restores a dropped table whole: all its batches are pending again.
        everything = silver.pending_work(spark, settings)
        work = silver.Work(
            {source: everything.dates[source] if source in lost else days
             for source, days in work.dates.items()},
            {**work.batches, **{source: everything.batches.get(source, {}) for source in lost}},
        )
    pending = [days for days in work.dates.values() if days]
    if selection.day is None:
        log.info("silver: %d arrival date(s) pending, %d (source, date) pair(s) over %d source(s)",
                 len({day for days in pending for day in days}), sum(len(days) for days in pending),
                 len(pending))
    else:
        # A dated run takes its date again even when silver recorded it: say which it is.
        done = [source for source, batches in work.batches.items()
                if batches and all(batch.recorded for batch in batches.values())]
        log.info("silver: arrival date %s, %d source(s) with bronze batches%s", selection.day,
                 sum(1 for batches in work.batches.values() if batches),
                 f", already processed for {', '.join(sorted(done))}" if done else "")
    for source in SOURCES:
        if not work.dates.get(source):
            log.info("silver %s: nothing pending", source)
    return silver.process_work(spark, settings, work, key)


def _silver_work(spark: SparkSession, settings: Settings, selection: DateSelection) -> silver.Work:
    """Per source: the selected date, or the arrival dates of bronze batches silver has not processed."""
    if selection.day is None:
        return silver.pending_work(spark, settings)
    work = silver.work_on(spark, settings, {source: [selection.day] for source in SOURCES})
    if not any(work.batches.values()):
        raise NoBronzeDataError(
            f"bronze has no batch for {selection.day}; run `lakeward run bronze --date "
            f"{selection.day}` first"
        )
    return work


def run_gold(
    spark: SparkSession, settings: Settings, selection: DateSelection
) -> incremental.GoldResult:
    """Bring gold up to date with everything silver holds, or recompute it with ``full``.

    Gold follows silver, not the date: whatever silver received since the
    last gold run (on any arrival date) is applied. A ``--date`` that silver
    has not reached gets a warning: gold's features end before it.
    """
    result = incremental.refresh(spark, settings, full=selection.full)
    if selection.day is not None and (result.as_of is None or result.as_of < selection.day):
        reached = "no arrival day" if result.as_of is None else f"arrival days up to {result.as_of}"
        log.warning("gold: silver holds %s, so gold's features do not reach %s; run `lakeward run "
                    "silver --date %s` first", reached, selection.day, selection.day)
    return result
