"""The medallion pipeline end to end, in-process, on generated data with faults."""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import bronze, pipeline, quality, silver, tables
from lakeward.config import Settings
from lakeward.pipeline import DateSelection
from lakeward.privacy.keys import pii_key
from lakeward.sources.bitebridge import PERSONAL_FIELDS, SOURCES, FaultRates, generate, landing_file
from tests.conftest import isolated

pytestmark = pytest.mark.integration

FAULTS = FaultRates(duplicate=0.08, late=0.08, malformed=0.1, null_key=0.04, out_of_range=0.04)


@pytest.fixture(scope="module")
def run(spark: SparkSession, base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = isolated(base_settings, tmp_path_factory.mktemp("pipeline"))
    generate(settings.landing_dir, seed=11, users=40, days=5, start=date(2026, 3, 1), faults=FAULTS)
    pipeline.run(spark, settings, "all", DateSelection())
    return settings


def _count(spark: SparkSession, settings: Settings, logical: str, **where: str) -> int:
    df = tables.read(spark, settings.table(logical))
    for column, value in where.items():
        df = df.filter(F.col(column) == value)
    return df.count()


def _landing_lines(settings: Settings, source: str) -> int:
    files = (settings.landing_dir / source).glob("*.jsonl")
    return sum(len(f.read_bytes().splitlines()) for f in files)


def test_every_landing_line_is_in_bronze_or_quarantine(spark: SparkSession, run: Settings) -> None:
    for source in SOURCES:
        lines = _landing_lines(run, source)
        in_bronze = _count(spark, run, f"bronze_{source}")
        quarantined = _count(spark, run, "bronze_quarantine", source=source)
        assert lines == in_bronze + quarantined, source
        assert lines > 0
    reasons = {r[0] for r in tables.read(spark, run.table("bronze_quarantine")).select("reason").collect()}
    assert bronze.MALFORMED in reasons and reasons <= {bronze.MALFORMED, bronze.BLANK}
    ledger = tables.read(spark, run.table("ops_ingestion_batches"))
    assert ledger.count() == len(list(run.landing_dir.glob("*/*.jsonl")))
    assert ledger.filter("lines != rows_written + rows_quarantined").count() == 0


def test_every_bronze_row_is_in_silver_quarantine_or_a_counted_duplicate(
    spark: SparkSession, run: Settings
) -> None:
    ledger = tables.read(spark, run.table("ops_silver_batches"))
    assert ledger.agg(F.sum("rows_duplicate")).first()[0] > 0, "the generator injected duplicates"
    for source in SOURCES:
        totals = ledger.filter(F.col("source") == source).agg(
            *[F.sum(c).alias(c) for c in ("rows_in", "rows_quarantined", "rows_duplicate", "rows_written")]
        ).first()
        assert totals["rows_in"] == _count(spark, run, f"bronze_{source}")
        assert totals["rows_quarantined"] == _count(spark, run, "silver_quarantine", source=source)
        assert totals["rows_in"] == (
            totals["rows_quarantined"] + totals["rows_duplicate"] + totals["rows_written"]
        )
        if source != "users":
            assert totals["rows_written"] == _count(spark, run, silver.SOURCES[source].table)
    silver_orders = tables.read(spark, run.table("silver_orders"))
    assert silver_orders.groupBy("event_id").count().filter("count > 1").count() == 0
    quarantine = tables.read(spark, run.table("silver_quarantine")).select("reason").collect()
    reasons = {r[0].split(":")[0] for r in quarantine}
    assert {"null_key", "out_of_range"} <= reasons


def test_gold_tables_are_built(spark: SparkSession, run: Settings) -> None:
    daily = tables.read(spark, run.table("gold_user_daily"))
    orders = tables.read(spark, run.table("silver_orders"))
    assert daily.agg(F.sum("orders")).first()[0] == orders.count()
    assert daily.agg(F.sum("spend")).first()[0] == orders.agg(F.sum("amount")).first()[0]
    features = tables.read(spark, run.table("gold_user_features"))
    end_of_day = F.to_timestamp(F.date_add("feature_date", 1)) - F.expr("INTERVAL 1 MICROSECOND")
    assert features.filter(~F.col("feature_ts").eqNullSafe(end_of_day)).count() == 0
    assert {r[0] for r in features.select("feature_version").distinct().collect()} == {"v1"}


def _gold_equals_full(spark: SparkSession, settings: Settings) -> None:
    """Both gold tables, as the runs so far left them, equal ``lakeward run gold --full``."""
    gold_names = [settings.table(t) for t in ("gold_user_daily", "gold_user_features")]
    increment = {n: tables.read(spark, n, version=tables.current_version(spark, n)) for n in gold_names}
    assert pipeline.run_gold(spark, settings, DateSelection(full=True)).mode == "full"
    for name in gold_names:
        assert_df_equality(increment[name], tables.read(spark, name),
                           ignore_row_order=True, ignore_nullable=True)


def test_day_by_day_in_shuffled_order_equals_full_gold(
    spark: SparkSession, base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = isolated(base_settings, tmp_path_factory.mktemp("shuffled"))
    generate(settings.landing_dir, seed=23, users=30, days=5, start=date(2026, 4, 1), faults=FAULTS)
    days = sorted({date.fromisoformat(f.stem) for f in settings.landing_dir.glob("*/*.jsonl")})
    order = [days[i] for i in (2, 0, 4, 4, 1, 3)] + days[5:]
    for day in order:
        pipeline.run(spark, settings, "all", DateSelection(day))
    _gold_equals_full(spark, settings)
    modes = [m[0] for m in tables.read(spark, settings.table("ops_gold_runs")).orderBy("finished_at")
             .select("mode").collect()]
    # Full: the first run and --full. A day that moved arrivals back (updates
    # in silver's change feed) is an increment too; a day run again changes nothing.
    assert modes[0] == modes[-1] == "full" and "incremental" in modes, modes
    assert set(modes[1:-1]) <= {"incremental", "up_to_date"}, modes


def test_rerunning_changes_nothing(spark: SparkSession, run: Settings) -> None:
    names = [run.table(t) for t in run.tables if t.startswith(("bronze_", "silver_", "gold_"))]
    before = {name: tables.read(spark, name).collect() for name in names}
    # Not a commit either: rewriting the same rows, or a ledger row for work already
    # done, would show as a new version. The one exception: a date named again is
    # gated again, and that gate run is recorded like any other.
    gate_log = run.table("ops_quality_results")
    every = [name for name in map(run.table, run.tables) if name != gate_log and tables.exists(spark, name)]
    versions = {name: tables.current_version(spark, name) for name in every}
    pipeline.run(spark, run, "all", DateSelection(date(2026, 3, 2)))
    pipeline.run(spark, run, "all", DateSelection())
    assert {name: tables.current_version(spark, name) for name in every} == versions
    for name in names:
        after = tables.read(spark, name)
        assert_df_equality(
            spark.createDataFrame(before[name], schema=after.schema),
            after,
            ignore_row_order=True,
            ignore_nullable=True,
        )


def _raw_identifiers(settings: Settings) -> set[str]:
    """Every personal value of the users landing files: ids, emails, names and addresses."""
    found: set[str] = set()
    for path in (settings.landing_dir / "users").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            found.update(v for k, v in record.items() if k in PERSONAL_FIELDS["users"] and isinstance(v, str))
    return found


def _table_dir(spark: SparkSession, name: str) -> Path:
    location = DeltaTable.forName(spark, name).detail().first()["location"]
    return Path(re.sub(r"^file:", "", location))


def test_no_raw_identifier_in_silver_or_gold_files(spark: SparkSession, run: Settings) -> None:
    raw = _raw_identifiers(run)
    assert len(raw) > 40
    logical = [t for t in run.tables if t.startswith(("silver_", "gold_"))]
    for name in (run.table(t) for t in logical):
        directory = _table_dir(spark, name)
        for parquet in directory.rglob("*.parquet"):
            table = pq.read_table(parquet)
            for column in table.column_names:
                values = {str(v) for v in table.column(column).to_pylist() if v is not None}
                # No personal value is a value here, nor part of one.
                text = "\n".join(values)
                assert not any(r in text for r in raw), f"{name}.{column} holds personal data"
        log_text = "".join(p.read_text() for p in (directory / "_delta_log").glob("*.json"))
        assert not any(r in log_text for r in raw), f"{name}: raw identifier in _delta_log"


def _file_stats(directory: Path) -> list[dict[str, Any]]:
    """The statistics of every file added in a table's ``_delta_log``."""
    return [
        json.loads(json.loads(line)["add"]["stats"])
        for path in (directory / "_delta_log").glob("*.json")
        for line in path.read_text().splitlines()
        if line.startswith('{"add"')
    ]


def test_bronze_keeps_no_statistics_for_personal_columns(spark: SparkSession, run: Settings) -> None:
    directory = _table_dir(spark, run.table("bronze_users"))
    log_text = "".join(p.read_text() for p in (directory / "_delta_log").glob("*.json"))
    assert not any(r in log_text for r in _raw_identifiers(run))
    stats = _file_stats(directory)
    assert stats and {key for s in stats for key in s["minValues"]} == {"_arrival_date", "_batch_id"}


def test_feature_history_keeps_statistics_only_on_user_and_time(spark: SparkSession, run: Settings) -> None:
    stats = _file_stats(_table_dir(spark, run.table("gold_user_features")))
    assert stats and all(s["numRecords"] > 0 for s in stats)
    assert {key for s in stats for key in s["minValues"]} == {"user_key", "feature_date", "feature_ts"}


def test_crash_between_write_and_ledger_adds_nothing_twice(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = isolated(base_settings, tmp_path)
    generate(settings.landing_dir, seed=5, users=20, days=2, start=date(2026, 3, 1), faults=FAULTS)
    bronze.ensure_tables(spark, settings)
    days = [date(2026, 3, 1), date(2026, 3, 2)]

    def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed between the data write and the ledger write")

    monkeypatch.setattr(bronze, "record_batches", crash)
    with pytest.raises(SystemExit):
        bronze.ingest(spark, settings, "order_placed", days)
    name = settings.table("bronze_order_placed")
    assert tables.read(spark, name).count() > 0  # the data write happened
    assert _count(spark, settings, "ops_ingestion_batches") == 0
    monkeypatch.undo()

    # The retry covers a different set of files than the crashed run: one, then both.
    bronze.ingest(spark, settings, "order_placed", days[:1])
    result = bronze.ingest(spark, settings, "order_placed", days)
    # Only these days' files: late lines may also have made a third arrival day.
    lines = sum(len(landing_file(settings.landing_dir, "order_placed", d).read_bytes().splitlines())
                for d in days)
    assert result.skipped == 1
    rows = tables.read(spark, name).count()
    quarantined = _count(spark, settings, "bronze_quarantine", source="order_placed")
    assert rows + quarantined == lines
    assert tables.read(spark, name).groupBy("_batch_id", "_line_no").count().filter("count > 1").count() == 0
    again = bronze.ingest(spark, settings, "order_placed", days)
    assert again.skipped == 2 and tables.read(spark, name).count() == rows


def test_line_numbers_point_at_the_source_line(spark: SparkSession, run: Settings) -> None:
    """Every bronze row and every quarantined line, malformed lines before them included."""
    lines: dict[str, list[str]] = {}

    def line_of(row: Row) -> str:
        source_file = row["_source_file"]
        if source_file not in lines:
            lines[source_file] = (run.data_root / source_file).read_bytes().decode().split("\n")
        return lines[source_file][row["_line_no"] - 1]

    def event_id_text(line: str) -> str | None:
        # Bronze keeps a field as its JSON text: a string as is, anything else as written.
        value = json.loads(line).get("event_id")
        return value if value is None or isinstance(value, str) else json.dumps(value)

    for source in SOURCES:
        rows = tables.read(spark, run.table(f"bronze_{source}")).collect()
        assert rows and all(event_id_text(line_of(r)) == r["event_id"] for r in rows), source
    quarantined = tables.read(spark, run.table("bronze_quarantine")).collect()
    assert quarantined and all(line_of(r) == r["raw_line"] for r in quarantined)


def _with_contracts(base_settings: Settings, tmp_path: Path, contracts: dict[str, str]) -> Settings:
    """Isolated settings with ``contracts`` (suite name -> YAML) and the default ones of other tables."""
    directory = tmp_path / "contracts"
    directory.mkdir()
    for suite, text in contracts.items():
        (directory / f"{suite}.yml").write_text(text)
    given = quality.load_contracts(directory)
    for table, contract in quality.load_contracts(base_settings.contracts_dir).items():
        if table not in given:
            shutil.copy(base_settings.contracts_dir / f"{contract.suite}.yml", directory)
    settings = isolated(base_settings, tmp_path)
    return settings.model_copy(
        update={"quality": settings.quality.model_copy(update={"contracts_dir": str(directory)})}
    )


def test_failing_gate_leaves_silver_unchanged(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    settings = _with_contracts(base_settings, tmp_path, {
        "strict_orders": "table: silver_orders\nexpectations:\n"
        "  - expect_column_values_to_not_be_null: {column: event_id}\n"
        "  - expect_column_values_to_be_between: {column: amount, min_value: 0, max_value: 1}\n"
    })
    generate(settings.landing_dir, seed=3, users=15, days=1, start=date(2026, 3, 1), faults=FaultRates.none())
    pipeline.ensure_tables(spark, settings)
    bronze.ingest(spark, settings, "order_placed", [date(2026, 3, 1)])
    name = settings.table("silver_orders")
    version = tables.current_version(spark, name)
    with pytest.raises(quality.GateFailed) as err:
        silver.process(spark, settings, "order_placed", [date(2026, 3, 1)], pii_key(settings))
    assert "expect_column_values_to_be_between" in str(err.value)
    assert "expect_column_values_to_not_be_null" not in str(err.value)
    assert tables.current_version(spark, name) == version
    assert tables.read(spark, name).count() == 0
    assert _count(spark, settings, "ops_silver_batches") == 0
    results = tables.read(spark, settings.table("ops_quality_results")).collect()
    assert {(r["expectation"], r["success"]) for r in results} == {
        ("expect_column_values_to_not_be_null", True),
        ("expect_column_values_to_be_between", False),
    }
    failed = next(r for r in results if not r["success"])
    assert failed["unexpected_count"] > 0 and failed["gate_passed"] is False
    # Counts only: no value of the batch is recorded. The text columns are the only ones that
    # could carry a value; the clock and the computed percentages are left out of the scan, since
    # a time like 10:45.123456 contains an amount like 5.12 by chance.
    assert set(results[0].asDict()) == set(quality.RESULT_SCHEMA.names)
    text_columns = ("batch", "suite", "table_name", "expectation", "kwargs")
    text = json.dumps([[r[c] for c in text_columns] for r in results])
    bronze_rows = tables.read(spark, settings.table("bronze_order_placed")).select("amount").collect()
    amounts = {str(r[0]) for r in bronze_rows if r[0] is not None}
    assert not any(a in text for a in amounts if len(a) > 3)


def test_a_failing_gate_keeps_what_the_other_sources_wrote(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _with_contracts(base_settings, tmp_path, {
        "orders": "table: silver_orders\nexpectations:\n"
        "  - expect_column_values_to_not_be_null: {column: event_id}\n",
        "strict_ratings": "table: silver_ratings\nexpectations:\n"
        "  - expect_column_values_to_be_between: {column: rating, min_value: 6, max_value: 7}\n",
        "strict_deliveries": "table: silver_deliveries\nexpectations:\n"
        "  - expect_column_values_to_be_between: {column: promised_minutes, min_value: -2, max_value: -1}\n",
    })
    contracts = Path(settings.quality.contracts_dir)
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=5, users=15, days=1, start=day, faults=FaultRates.none())
    pipeline.ensure_tables(spark, settings)
    bronze.ingest_sources(spark, settings, ["order_placed", "rating_submitted", "delivery_completed"], [day])
    ratings_version = tables.current_version(spark, settings.table("silver_ratings"))
    # The failing sources come first: the sources are written side by side, so the others still are.
    pending = {"rating_submitted": [day], "delivery_completed": [day], "order_placed": [day]}
    with caplog.at_level("ERROR", logger="lakeward"), pytest.raises(quality.GateFailed) as failed:
        silver.process_sources(spark, settings, pending, pii_key(settings))
    # Every failed gate is named, in the error and in the log.
    assert set(failed.value.failures) == {"strict_ratings", "strict_deliveries"}
    assert "quality gate strict_ratings failed: expect_column_values_to_be_between" in str(failed.value)
    assert "quality gate strict_deliveries failed: expect_column_values_to_be_between" in str(failed.value)
    assert {r.getMessage().split()[1] for r in caplog.records} == {"strict_ratings", "strict_deliveries"}
    assert _count(spark, settings, "silver_orders") == _count(spark, settings, "bronze_order_placed") > 0
    assert tables.current_version(spark, settings.table("silver_ratings")) == ratings_version
    ledger = tables.read(spark, settings.table("ops_silver_batches")).collect()
    assert {(r["source"], r["arrival_date"]) for r in ledger} == {("order_placed", day)}
    results = tables.read(spark, settings.table("ops_quality_results")).collect()
    assert {(r["suite"], r["success"]) for r in results} == {
        ("orders", True), ("strict_ratings", False), ("strict_deliveries", False)
    }
    # The retry after the contract is mended writes the ratings and leaves the orders as they were.
    (contracts / "strict_ratings.yml").write_text(
        "table: silver_ratings\nexpectations:\n"
        "  - expect_column_values_to_be_between: {column: rating, min_value: 1, max_value: 5}\n"
    )
    orders_version = tables.current_version(spark, settings.table("silver_orders"))
    results_by_source = {r.source: r for r in silver.process_sources(
        spark, settings, {"rating_submitted": [day]}, pii_key(settings)
    )}
    assert results_by_source["rating_submitted"].rows_written > 0
    assert tables.current_version(spark, settings.table("silver_orders")) == orders_version


def test_missing_landing_date_is_a_clear_error(spark: SparkSession, run: Settings) -> None:
    with pytest.raises(bronze.NoLandingDataError, match="no landing files for 2025-01-01"):
        pipeline.run_bronze(spark, run, DateSelection(date(2025, 1, 1)))
    assert landing_file(run.landing_dir, "users", date(2026, 3, 1)).exists()


def test_silver_for_a_date_bronze_never_ingested_is_a_clear_error(
    spark: SparkSession, run: Settings
) -> None:
    written = ["ops_silver_batches", "ops_quality_results", "silver_quarantine", "silver_orders"]
    before = {name: tables.current_version(spark, run.table(name)) for name in written}
    with pytest.raises(pipeline.NoBronzeDataError, match="bronze has no batch for 2031-01-01"):
        pipeline.run_silver(spark, run, DateSelection(date(2031, 1, 1)))
    assert {name: tables.current_version(spark, run.table(name)) for name in written} == before


def test_an_event_sent_again_with_another_time_is_a_duplicate_on_a_later_day(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """``event_id`` is the event's identity: a copy sent again a day later with a
    corrected timestamp, so on another event date, is dropped as a duplicate."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=30, days=2, start=days[0], faults=FaultRates.none())
    first_file = landing_file(settings.landing_dir, "order_placed", days[0])
    original = json.loads(first_file.read_text().splitlines()[0])
    with landing_file(settings.landing_dir, "order_placed", days[1]).open("a") as f:
        f.write(json.dumps({**original, "event_ts": "2026-03-02T12:00:00Z", "amount": 1.0}) + "\n")
    bronze.ensure_tables(spark, settings)
    silver.ensure_tables(spark, settings)
    for day in days:
        bronze.ingest(spark, settings, "order_placed", [day])
        silver.process(spark, settings, "order_placed", [day], pii_key(settings))

    orders = tables.read(spark, settings.table("silver_orders"))
    kept = orders.filter(F.col("event_id") == original["event_id"]).collect()
    assert [(r["event_ts"].isoformat(), float(r["amount"])) for r in kept] == [
        (original["event_ts"].removesuffix("Z"), original["amount"])
    ]
    assert orders.groupBy("event_id").count().filter("count > 1").count() == 0
    ledger = tables.read(spark, settings.table("ops_silver_batches")).collect()
    assert {(r["arrival_date"], r["rows_duplicate"]) for r in ledger} == {(days[0], 0), (days[1], 1)}


def test_a_carriage_return_inside_a_line_is_quarantined_with_its_line(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """Lines end at a newline only, so a stray ``\\r`` leaves the count reconciled."""
    settings = isolated(base_settings, tmp_path)
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=5, users=10, days=1, start=day, faults=FaultRates.none())
    path = landing_file(settings.landing_dir, "order_placed", day)
    lines = path.read_text().splitlines()
    with path.open("a", newline="") as f:
        f.write('{"event_id": "broken\r", "amount": 1}\n')
        f.write(lines[0].replace("{", "{ ", 1) + "\r\n")  # a Windows line ending: still a good line
    bronze.ensure_tables(spark, settings)
    bronze.ingest(spark, settings, "order_placed", [day])
    quarantined = tables.read(spark, settings.table("bronze_quarantine")).collect()
    assert [r["_line_no"] for r in quarantined] == [len(lines) + 1]
    assert _count(spark, settings, "bronze_order_placed") == len(lines) + 1


def _silver_ledger(spark: SparkSession, settings: Settings, source: str, day: date) -> list[tuple[int, ...]]:
    """Rows in, quarantined, duplicates and written of each silver ledger row of a source and day."""
    ledger = tables.read(spark, settings.table("ops_silver_batches")).filter(
        (F.col("source") == source) & (F.col("arrival_date") == day)
    )
    counts = ("rows_in", "rows_quarantined", "rows_duplicate", "rows_written")
    return [tuple(r) for r in ledger.orderBy("processed_at").select(*counts).collect()]


def test_a_landing_file_sent_again_with_more_lines_reaches_silver(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """A landing file replaced after its day was processed is a new bronze batch:
    ``--all-dates`` takes it to silver, where its lines silver already has are duplicates."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=30, days=2, start=days[0], faults=FaultRates.none())
    pipeline.ensure_tables(spark, settings)
    pipeline.run_bronze(spark, settings, DateSelection())
    pipeline.run_silver(spark, settings, DateSelection())
    nothing = {source: [] for source in SOURCES}
    assert silver.pending_dates(spark, settings) == nothing
    path = landing_file(settings.landing_dir, "order_placed", days[0])
    lines = path.read_text().splitlines()
    added = {**json.loads(lines[0]), "event_id": "sent-again-1", "order_id": "ord_sent_again"}
    path.write_text("\n".join([*lines, json.dumps(added)]) + "\n")

    pipeline.run_bronze(spark, settings, DateSelection())
    assert silver.pending_dates(spark, settings) == {**nothing, "order_placed": [days[0]]}
    pipeline.run_silver(spark, settings, DateSelection())

    orders = tables.read(spark, settings.table("silver_orders"))
    assert orders.filter(F.col("event_id") == "sent-again-1").count() == 1
    assert orders.groupBy("event_id").count().filter("count > 1").count() == 0
    n = len(lines)
    assert _silver_ledger(spark, settings, "order_placed", days[0]) == [(n, 0, 0, n), (n + 1, 0, n, 1)]
    assert silver.pending_dates(spark, settings) == nothing
    # The date again: every row is one silver has, so no commit, and the ledger keeps its counts.
    version = tables.current_version(spark, settings.table("silver_orders"))
    results = pipeline.run_silver(spark, settings, DateSelection(days[0]))
    assert {(r.rows_in, r.rows_written) for r in results} == {(0, 0)}
    assert tables.current_version(spark, settings.table("silver_orders")) == version
    results_table = tables.read(spark, settings.table("ops_quality_results"))
    gates = results_table.filter(F.col("suite") == "silver_orders")
    last = gates.filter(F.col("checked_at") == gates.agg(F.max("checked_at")).first()[0])
    assert {r["element_count"] for r in last.collect()} == {0}, "rows of recorded batches are not gated again"
    assert _silver_ledger(spark, settings, "order_placed", days[0]) == [(n, 0, 0, n), (n + 1, 0, n, 1)]


def test_a_day_whose_event_files_hold_no_readable_line_moves_the_features_on(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """Bronze quarantines every line of the day's event files; silver still records the
    day, so gold's history runs up to it, in an increment as in ``--full``."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=7, users=30, days=2, start=days[0], faults=FaultRates.none())
    for source in ("order_placed", "delivery_completed", "rating_submitted"):
        landing_file(settings.landing_dir, source, days[1]).write_text('{"event_id": "cut\n')
    pipeline.run(spark, settings, "all", DateSelection(days[0]))
    pipeline.run(spark, settings, "all", DateSelection())

    assert _silver_ledger(spark, settings, "order_placed", days[1]) == [(0, 0, 0, 0)]
    name = settings.table("gold_user_features")
    features = tables.read(spark, name, version=tables.current_version(spark, name))
    assert features.agg(F.max("feature_date")).first()[0] == days[1]
    assert features.filter(F.col("feature_date") == days[1]).count() == features.filter(
        F.col("feature_date") == days[0]
    ).count() > 0
    pipeline.run(spark, settings, "gold", DateSelection(full=True))
    assert_df_equality(features, tables.read(spark, name), ignore_row_order=True, ignore_nullable=True)


def test_a_silver_ledger_from_before_batch_ids_still_marks_its_dates_done(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """A data root whose ``ops.silver_batches`` has no ``batch_id`` column: its rows cover the
    batches of their date ingested before them, and the next silver run adds the column."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=20, days=2, start=days[0], faults=FaultRates.none())
    old_schema = T.StructType([f for f in silver.LEDGER_SCHEMA.fields if f.name != "batch_id"])
    name = settings.table("ops_silver_batches")
    tables.ensure_tables(spark, [tables.TableSpec(name=name, schema=old_schema)])
    pipeline.ensure_tables(spark, settings)
    pipeline.run_bronze(spark, settings, DateSelection())
    old_row = ("order_placed", days[0], 1, 0, 0, 1, datetime.now(UTC).replace(tzinfo=None))
    tables.append(spark.createDataFrame([old_row], old_schema), name)

    pending = silver.pending_dates(spark, settings)
    assert pending == {**{source: days for source in SOURCES}, "order_placed": [days[1]]}
    pipeline.run_silver(spark, settings, DateSelection())

    assert "batch_id" in tables.read(spark, name).columns
    assert silver.pending_dates(spark, settings) == {source: [] for source in SOURCES}
    assert _silver_ledger(spark, settings, "order_placed", days[0]) == [(1, 0, 0, 1)]
    # The old row still covers its date when the date is run again.
    pipeline.run_silver(spark, settings, DateSelection(days[0]))
    assert _silver_ledger(spark, settings, "order_placed", days[0]) == [(1, 0, 0, 1)]


def test_a_retry_removes_what_a_crash_left_of_a_file_changed_or_removed_since(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=20, days=2, start=days[0], faults=FAULTS)
    bronze.ensure_tables(spark, settings)
    monkeypatch.setattr(bronze, "record_batches", lambda *args, **kwargs: sys.exit("killed"))
    with pytest.raises(SystemExit):
        bronze.ingest(spark, settings, "order_placed", days)
    monkeypatch.undo()
    changed, removed = (landing_file(settings.landing_dir, "order_placed", d) for d in days)
    first_line = changed.read_bytes().splitlines(keepends=True)[0]
    with changed.open("ab") as fh:
        fh.write(first_line)  # sent again with one more line: a new checksum, a new batch
    removed.unlink()

    result = bronze.ingest(spark, settings, "order_placed", days)
    assert (result.files, result.skipped) == (1, 0)
    recorded = {r["batch_id"] for r in tables.read(spark, settings.table("ops_ingestion_batches")).collect()}
    for logical in ("bronze_order_placed", "bronze_quarantine"):
        batches = {r["_batch_id"] for r in tables.read(spark, settings.table(logical)).collect()}
        assert batches <= recorded, logical
    rows = _count(spark, settings, "bronze_order_placed")
    quarantined = _count(spark, settings, "bronze_quarantine", source="order_placed")
    assert rows + quarantined == len(changed.read_bytes().splitlines())


def test_a_data_root_whose_path_has_a_plus_a_space_or_an_accent(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    # Spark reports the path of a file it read as a URI, which spells these otherwise than Python.
    settings = isolated(base_settings, tmp_path / "odd+root é 1")
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=5, users=20, days=1, start=day, faults=FAULTS)
    bronze.ensure_tables(spark, settings)
    result = bronze.ingest(spark, settings, "order_placed", [day])
    lines = len(landing_file(settings.landing_dir, "order_placed", day).read_bytes().splitlines())
    assert result.rows_written + result.rows_quarantined == lines and result.rows_written > 0


def test_a_user_record_replaced_before_the_retry_counts_as_a_duplicate(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run dies after writing day 1's users; day 2 replaces some of those records; the
    retry of day 1 counts the records still in silver as written, the replaced ones as duplicates."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=60, days=2, start=days[0], faults=FaultRates.none(),
             users_feed="changes")
    pipeline.ensure_tables(spark, settings)
    pipeline.run_bronze(spark, settings, DateSelection())
    monkeypatch.setattr(quality, "record", lambda *args, **kwargs: sys.exit("killed"))
    with pytest.raises(SystemExit):
        pipeline.run_silver(spark, settings, DateSelection(days[0]))
    monkeypatch.undo()
    users = settings.table("silver_users")
    [day_one] = [r["_batch_id"] for r in tables.read(spark, users).select("_batch_id").distinct().collect()]
    written_first = tables.read(spark, users).count()

    pipeline.run_silver(spark, settings, DateSelection(days[1]))
    kept = tables.read(spark, users).filter(F.col("_batch_id") == day_one).count()
    assert 0 < kept < written_first, "day 2 replaces some of day 1's records, not all"
    pipeline.run_silver(spark, settings, DateSelection(days[0]))

    [(rows_in, quarantined, duplicates, written)] = _silver_ledger(spark, settings, "users", days[0])
    assert (quarantined, written, duplicates) == (0, kept, rows_in - kept)


def _three_days_in_bronze(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, altered: str | None = None
) -> tuple[Settings, list[date]]:
    """Three days of data in bronze, with many events sent again the next day.

    With ``altered``, one day 1 order is also sent on day 2 with that ``event_ts``.
    """
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1) + timedelta(days=n) for n in range(3)]
    faults = replace(FaultRates.none(), duplicate=0.3)
    generate(settings.landing_dir, seed=3, users=60, days=3, start=days[0], faults=faults)
    if altered is not None:
        day_two = landing_file(settings.landing_dir, "order_placed", days[1])
        sent = {json.loads(line)["event_id"] for line in day_two.read_text().splitlines()}
        lines = landing_file(settings.landing_dir, "order_placed", days[0]).read_text().splitlines()
        order = next(o for o in map(json.loads, lines) if o["event_id"] not in sent)
        with day_two.open("a") as out:
            out.write(json.dumps({**order, "event_ts": altered}) + "\n")
    pipeline.ensure_tables(spark, settings)
    pipeline.run_bronze(spark, settings, DateSelection())
    return settings, days


def test_a_retry_over_more_days_credits_each_row_to_the_batch_that_wrote_it(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run on day 2 dies after its silver writes; the retry takes days 1 to 3. An event
    whose line is in the day 1 and day 2 files is held from day 2's batch: day 2's ledger
    row counts it as written (day 1's as a duplicate), so the ledger adds up to the table."""
    settings, days = _three_days_in_bronze(spark, base_settings, tmp_path)
    orders = tables.read(spark, settings.table("bronze_order_placed"))
    in_both = (orders.filter(F.col("_arrival_date").isin(days[0], days[1]))
               .groupBy("event_id").agg(F.countDistinct("_arrival_date").alias("files"))
               .filter("files = 2").count())
    assert in_both > 0, "the data must hold events sent on day 1 and again on day 2"
    monkeypatch.setattr(silver, "_record", lambda *args, **kwargs: sys.exit("killed"))
    with pytest.raises(SystemExit):
        pipeline.run_silver(spark, settings, DateSelection(days[1]))
    monkeypatch.undo()

    pipeline.run_silver(spark, settings, DateSelection())
    ledger = tables.read(spark, settings.table("ops_silver_batches"))
    for source, spec in silver.SOURCES.items():
        held = tables.read(spark, settings.table(spec.table)).count()
        [written] = ledger.filter(F.col("source") == source).agg(F.sum("rows_written")).first()
        assert written == held, source
    [(rows_in, quarantined, duplicates, written)] = _silver_ledger(spark, settings, "order_placed", days[0])
    assert duplicates >= in_both and rows_in == quarantined + duplicates + written


def test_an_event_sent_on_two_days_arrives_on_the_first_whatever_day_runs_first(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """Day 2 runs before day 1. An event whose line is in both files is held from day 2's
    batch; day 1's run moves its arrival back to day 1, as a run in order would have it
    (gold counts an event from its arrival), and counts its own copy as a duplicate. A day 1
    copy with another timestamp changes nothing: the held values with day 1's arrival would
    be a row neither order gives, one that arrived before it happened."""
    settings, days = _three_days_in_bronze(spark, base_settings, tmp_path, altered="2026-03-02T20:00:00Z")
    [altered] = [
        r["event_id"] for r in tables.read(spark, settings.table("bronze_order_placed"))
        .groupBy("event_id").agg(F.countDistinct("event_ts").alias("forms")).filter("forms > 1").collect()
    ]
    pipeline.run_silver(spark, settings, DateSelection(days[1]))
    assert pipeline.run_gold(spark, settings, DateSelection()).mode == "full"
    for day in (days[0], days[2], days[0]):
        pipeline.run_silver(spark, settings, DateSelection(day))

    for source, logical in (("order_placed", "silver_orders"), ("delivery_completed", "silver_deliveries")):
        first = {
            r["event_id"]: r["first"]
            for r in tables.read(spark, settings.table(f"bronze_{source}"))
            .groupBy("event_id").agg(F.min("_arrival_date").alias("first")).collect()
        }
        held = tables.read(spark, settings.table(logical)).select("event_id", "_arrival_date", "_batch_id")
        first[altered] = days[1]
        assert {r["event_id"]: r["_arrival_date"] for r in held.collect()} == {
            r["event_id"]: first[r["event_id"]] for r in held.collect()
        }, source
        from_day_two = F.col("_batch_id").contains(f"{days[1]:%Y%m%d}")
        moved = held.filter((F.col("_arrival_date") == days[0]) & from_day_two)
        assert moved.count() > 0, f"{source}: the data must hold events sent on day 1 and again on day 2"
        [written] = tables.read(spark, settings.table("ops_silver_batches")).filter(
            F.col("source") == source
        ).agg(F.sum("rows_written")).first()
        assert written == held.count(), source
        [(rows_in, quarantined, duplicates, wrote)] = _silver_ledger(spark, settings, source, days[0])
        assert rows_in == quarantined + duplicates + wrote and duplicates >= moved.count()
    # The moved arrivals are updates in silver's change feed: gold applies them as an
    # increment, which equals a full recompute.
    assert pipeline.run_gold(spark, settings, DateSelection()).mode == "incremental"
    _gold_equals_full(spark, settings)


def _drop(spark: SparkSession, settings: Settings, *logical: str) -> None:
    """``DROP TABLE`` each table, data files included, through the session catalog.

    Not by SQL text: with Delta's extension, Spark 4.1 refuses a parameter in
    ``DROP TABLE IDENTIFIER(:name)`` (NOT_A_CONSTANT_STRING).
    """
    jvm = spark._jvm
    catalog = spark._jsparkSession.sessionState().catalog()
    for name in logical:
        schema, table = settings.table(name).split(".")
        catalog.dropTable(jvm.org.apache.spark.sql.catalyst.TableIdentifier(table, jvm.scala.Some(schema)),
                          False, False)


def test_tables_dropped_outside_lakeward_are_made_again_whole(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A silver table dropped (say with ``lakeward sql``) is created again empty by the next
    run: its batches are taken again from bronze, also by a run of one date. Gold then sees
    a silver table at a version it read before, with other rows (its Delta id tells), and
    recomputes in full; a dropped gold table is recomputed too, not left empty."""
    settings = isolated(base_settings, tmp_path)
    generate(settings.landing_dir, seed=5, users=30, days=3, start=date(2026, 3, 1), faults=FAULTS)
    days = sorted({date.fromisoformat(f.stem) for f in settings.landing_dir.glob("*/*.jsonl")})
    pipeline.run(spark, settings, "all", DateSelection(days[0]))
    before = {r["event_id"] for r in tables.read(spark, settings.table("silver_orders")).collect()}
    users = tables.read(spark, settings.table("silver_users")).count()
    assert before and users
    _drop(spark, settings, "silver_orders", "silver_users")

    with caplog.at_level("INFO", logger="lakeward"):
        pipeline.run(spark, settings, "all", DateSelection(days[1]))
    assert "no rows in" in caplog.text
    orders = tables.read(spark, settings.table("silver_orders"))
    assert before < {r["event_id"] for r in orders.collect()}
    assert tables.read(spark, settings.table("silver_users")).count() >= users
    ledger = tables.read(spark, settings.table("ops_silver_batches"))
    assert ledger.groupBy("batch_id").count().filter("count > 1").count() == 0, "a batch recorded twice"
    for source, spec in silver.SOURCES.items():
        if source != "users":
            [written] = ledger.filter(F.col("source") == source).agg(F.sum("rows_written")).first()
            assert written == tables.read(spark, settings.table(spec.table)).count(), source
    assert f"silver tables were replaced: {settings.table('silver_orders')}" in caplog.text
    _gold_equals_full(spark, settings)

    _drop(spark, settings, "gold_user_features")
    caplog.clear()
    with caplog.at_level("INFO", logger="lakeward"):
        assert pipeline.run_gold(spark, settings, DateSelection()).mode == "full"
    assert "created again since the last run" in caplog.text
    _gold_equals_full(spark, settings)


def test_a_silver_table_restored_with_its_rows_is_kept_and_one_emptied_is_filled_again(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The test for a lost silver table is its row count, not its version: a table put back
    from a copy (a new table at version 0 holding every row) keeps its ledger, and one
    emptied by ``DELETE`` gets every batch of its source again from bronze."""
    settings = isolated(base_settings, tmp_path)
    generate(settings.landing_dir, seed=6, users=30, days=3, start=date(2026, 3, 1), faults=FAULTS)
    days = sorted({date.fromisoformat(f.stem) for f in settings.landing_dir.glob("*/*.jsonl")})
    pipeline.run(spark, settings, "all", DateSelection(days[0]))
    name, ledger_name = settings.table("silver_orders"), settings.table("ops_silver_batches")
    held = tables.read(spark, name).collect()
    ledger = tables.read(spark, ledger_name).filter(F.col("source") == "order_placed")
    recorded = sorted(ledger.collect())
    assert held and recorded

    backup = str(tmp_path / "orders-backup")
    tables.read(spark, name).write.format("delta").save(backup)
    properties = tables.properties(spark, name)
    _drop(spark, settings, "silver_orders")
    restored = spark.read.format("delta").load(backup).write.format("delta")
    for key, value in properties.items():
        restored = restored.option(key, value)
    restored.saveAsTable(name)
    assert tables.current_version(spark, name) == 0
    with caplog.at_level("INFO", logger="lakeward"):
        pipeline.run_silver(spark, settings, DateSelection(days[0]))
    assert "no rows in" not in caplog.text
    assert sorted(ledger.collect()) == recorded
    assert_df_equality(tables.read(spark, name), spark.createDataFrame(held, tables.read(spark, name).schema),
                       ignore_row_order=True)

    DeltaTable.forName(spark, name).delete()
    pipeline.run(spark, settings, "bronze", DateSelection(days[1]))
    with caplog.at_level("INFO", logger="lakeward"):
        pipeline.run_silver(spark, settings, DateSelection(days[1]))
    assert "no rows in" in caplog.text
    batches = tables.read(spark, ledger_name)
    assert batches.groupBy("batch_id").count().filter("count > 1").count() == 0, "a batch recorded twice"
    assert {r["event_id"] for r in held} <= {r["event_id"] for r in tables.read(spark, name).collect()}
    [written] = batches.filter(F.col("source") == "order_placed").agg(F.sum("rows_written")).first()
    assert written == tables.read(spark, name).count()


def test_a_dropped_bronze_table_is_ingested_again_from_its_landing_files(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bronze's orders and quarantine tables dropped after day 1 ran whole and day 2 only
    through bronze. Silver refuses day 2 (bronze lost its rows), a bronze run dies part way,
    and the next run still writes the earlier files again, with the batch ids they had: bronze
    holds what it held and silver takes every batch once. A landing file removed meanwhile
    cannot be restored: its ledger row then records what bronze still holds, and the run says so."""
    settings = isolated(base_settings, tmp_path)
    generate(settings.landing_dir, seed=5, users=30, days=3, start=date(2026, 3, 1), faults=FAULTS)
    days = sorted({date.fromisoformat(f.stem) for f in settings.landing_dir.glob("*/*.jsonl")})
    pipeline.run(spark, settings, "all", DateSelection(days[0]))
    pipeline.run(spark, settings, "bronze", DateSelection(days[1]))
    names = [settings.table(t) for t in ("bronze_order_placed", "bronze_quarantine", "bronze_users")]

    def snapshot(name: str) -> list[Row]:
        rows = tables.read(spark, name).drop("_ingested_at").filter(F.col("_arrival_date") < days[2])
        return sorted(rows.collect(), key=repr)  # values may be None

    before = {name: snapshot(name) for name in names}
    assert all(before.values())
    gone = landing_file(settings.landing_dir, "order_placed", days[0])
    gone_batch = bronze.landing_files(settings, "order_placed", [days[0]])[0].batch_id
    day_2_batch = bronze.landing_files(settings, "order_placed", [days[1]])[0].batch_id
    gone.unlink()
    _drop(spark, settings, "bronze_order_placed", "bronze_quarantine")

    # Silver would mark day 2's orders done with none of their rows.
    with pytest.raises(silver.BronzeRowsMissingError, match=rf"{day_2_batch} \(0 of \d+\).*run bronze"):
        pipeline.run(spark, settings, "silver", DateSelection(days[1]))
    # A bronze run that dies before it writes leaves the shortfall for the next run to find.
    def crash(*_: object) -> None:
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(tables, "append_side_by_side", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline.run(spark, settings, "bronze", DateSelection(days[2]))
    monkeypatch.undo()

    with caplog.at_level("INFO", logger="lakeward"):
        pipeline.run(spark, settings, "all", DateSelection(days[2]))
    assert "fewer rows than" in caplog.text and "cannot be restored" in caplog.text
    assert snapshot(names[0]) == [r for r in before[names[0]] if r["_batch_id"] != gone_batch]
    assert snapshot(names[1]) == [r for r in before[names[1]] if r["_batch_id"] != gone_batch]
    assert snapshot(names[2]) == before[names[2]]
    ledger = tables.read(spark, settings.table("ops_ingestion_batches"))
    assert ledger.groupBy("batch_id").count().filter("count > 1").count() == 0, "a file recorded twice"
    gone_row = ledger.filter(F.col("batch_id") == gone_batch).first()
    assert (gone_row["rows_written"], gone_row["rows_quarantined"]) == (0, 0) and gone_row["lines"] > 0
    for name, column in ((names[0], "rows_written"), (names[1], "rows_quarantined")):
        held = tables.read(spark, name).groupBy("_batch_id").count()
        for row in ledger.join(held, ledger.batch_id == held._batch_id, "left").collect():
            if row["source"] == "order_placed" or name == names[1]:
                assert (row["count"] or 0) == row[column], (name, row["batch_id"])
    # Day 2, refused before, now goes through silver whole.
    pipeline.run(spark, settings, "all", DateSelection(days[1]))
    silver_ledger = tables.read(spark, settings.table("ops_silver_batches"))
    assert silver_ledger.groupBy("batch_id").count().filter("count > 1").count() == 0, "a batch taken twice"
    day_2 = silver_ledger.filter(F.col("batch_id") == day_2_batch).first()
    assert day_2["rows_in"] == ledger.filter(F.col("batch_id") == day_2_batch).first()["rows_written"] > 0
    # Nothing more to restore: the next run finds no shortfall.
    assert bronze.find_lost(spark, settings) == bronze.Restore()
    _gold_equals_full(spark, settings)


def test_a_table_whose_creation_stopped_before_the_catalog_is_created_again(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run killed while creating silver.orders left its first commit but no catalog entry:
    the next run creates the table. Files with rows where a table would go are left alone."""
    settings = isolated(base_settings, tmp_path)
    spec = silver.silver_spec(settings, "order_placed")
    schema, table = spec.name.rsplit(".", 1)
    tables.ensure_schema(spark, schema)
    directory = Path(urlparse(spark.catalog.getDatabase(schema).locationUri).path)
    # What Delta writes before it registers a new table in the catalog.
    DeltaTable.createIfNotExists(spark).location(str(directory / table)).addColumns(spec.schema).execute()
    with caplog.at_level("WARNING", logger="lakeward"):
        pipeline.ensure_tables(spark, settings)
    assert "creating it again" in caplog.text
    assert tables.exists(spark, spec.name) and tables.current_version(spark, spec.name) == 0
    properties = DeltaTable.forName(spark, spec.name).detail().first()["properties"]
    assert spec.delta_properties().items() <= properties.items()

    spark.range(3).write.format("delta").save(str(directory / "stray"))
    stray = tables.TableSpec(f"{schema}.stray", T.StructType([T.StructField("id", T.LongType())]))
    with pytest.raises(tables.UnknownTableFilesError, match=r"cannot create \S+\.stray: .*move them away"):
        tables.ensure_tables(spark, [stray])
    assert spark.read.format("delta").load(str(directory / "stray")).count() == 3


def test_a_users_table_from_before_batch_ids_gets_the_column(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """A data root whose ``silver.users`` has no ``_batch_id`` column: the next silver run
    adds it. The rows it held keep a null batch id; the new rows name their batch."""
    settings = isolated(base_settings, tmp_path)
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=5, users=15, days=1, start=day, faults=FaultRates.none())
    spec = silver.silver_spec(settings, "users")
    old_schema = T.StructType([f for f in spec.schema.fields if f.name != "_batch_id"])
    tables.ensure_tables(spark, [replace(spec, schema=old_schema)])
    old_row = ("k-old", date(2026, 1, 5), "Porto", datetime(2026, 1, 5, 9), "e-old", date(2026, 1, 5))
    tables.append(spark.createDataFrame([old_row], old_schema), spec.name)
    pipeline.ensure_tables(spark, settings)
    pipeline.run_bronze(spark, settings, DateSelection(day))
    pipeline.run_silver(spark, settings, DateSelection(day))

    users = tables.read(spark, spec.name)
    assert users.columns == spec.schema.fieldNames()
    [(_, _, duplicates, written)] = _silver_ledger(spark, settings, "users", day)
    assert duplicates == 0 and written == users.count() - 1
    assert users.filter(F.col("_batch_id").isNull()).select("user_key").collect() == [Row(user_key="k-old")]


def test_silver_leaves_the_rows_of_a_batch_bronze_has_not_recorded(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """Rows a bronze run left before it died (no ledger row) are not silver's to take:
    bronze removes them when it ingests the file again."""
    settings = isolated(base_settings, tmp_path)
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=5, users=20, days=1, start=day, faults=FaultRates.none())
    pipeline.ensure_tables(spark, settings)
    pipeline.run_bronze(spark, settings, DateSelection(day))
    name = settings.table("bronze_order_placed")
    left = tables.read(spark, name).limit(3).withColumns({
        "_batch_id": F.lit("order_placed-20260301-died"),
        "event_id": F.concat(F.lit("left-"), F.col("event_id")),
    })
    tables.append(left, name)
    pipeline.run_silver(spark, settings, DateSelection(day))
    orders = tables.read(spark, settings.table("silver_orders"))
    assert orders.count() > 0
    assert orders.filter(F.col("event_id").startswith("left-")).count() == 0
    batches = tables.read(spark, settings.table("ops_silver_batches")).select("batch_id").collect()
    assert "order_placed-20260301-died" not in {r[0] for r in batches}


def test_a_batch_is_done_only_once_its_gate_results_are_recorded(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that dies while writing the gate results leaves its batches pending:
    the next run gates them again and records both, writing no row twice. The rows
    the first run wrote count as their batch's, not as duplicates."""
    settings = isolated(base_settings, tmp_path)
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=5, users=15, days=1, start=day, faults=FaultRates.none())
    pipeline.ensure_tables(spark, settings)
    pipeline.run_bronze(spark, settings, DateSelection(day))

    def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed while writing the gate results")

    monkeypatch.setattr(quality, "record", crash)
    with pytest.raises(SystemExit):
        pipeline.run_silver(spark, settings, DateSelection())
    monkeypatch.undo()
    orders = _count(spark, settings, "silver_orders")
    assert orders > 0  # the data write happened
    assert _count(spark, settings, "ops_silver_batches") == 0
    assert silver.pending_dates(spark, settings)["order_placed"] == [day]

    pipeline.run_silver(spark, settings, DateSelection())
    assert _count(spark, settings, "silver_orders") == orders
    results = tables.read(spark, settings.table("ops_quality_results")).collect()
    suites = {"silver_orders", "silver_deliveries", "silver_ratings", "silver_users"}
    assert {r["suite"] for r in results} == suites
    gated = {r["element_count"] for r in results if r["suite"] == "silver_orders"}
    assert gated == {orders}, "the retry gates the rows the first run wrote"
    assert silver.pending_dates(spark, settings) == {source: [] for source in SOURCES}
    for source in SOURCES:
        [(_, _, duplicates, written)] = _silver_ledger(spark, settings, source, day)
        assert (duplicates, written) == (0, _count(spark, settings, silver.SOURCES[source].table)), source
