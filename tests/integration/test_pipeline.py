"""The medallion pipeline end to end, in-process, on generated data with faults."""

from __future__ import annotations

import json
import re
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from lakeward import bronze, pipeline, quality, silver, tables
from lakeward.config import Settings
from lakeward.pipeline import DateSelection
from lakeward.privacy.keys import pii_key
from lakeward.sources.bitebridge import PERSONAL_FIELDS, SOURCES, FaultRates, generate, landing_file
from tests.conftest import isolated
from tests.pipeline_checks import FAULTS, count_rows, daily_oracle, features_oracle, gold_equals_full

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(spark: SparkSession, base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The arrival days run through the whole pipeline one at a time, in a shuffled order,
    as a scheduler catching up after an outage may run them; then the days of the late
    events only, in one ``--all-dates`` run. The tests below hold for any order; the
    day-by-day test checks gold against --full, and ``test_rerunning_changes_nothing``
    runs a day again."""
    settings = isolated(base_settings, tmp_path_factory.mktemp("pipeline"))
    generate(settings.landing_dir, seed=11, users=40, days=4, start=date(2026, 3, 1), faults=FAULTS)
    days = sorted({date.fromisoformat(f.stem) for f in settings.landing_dir.glob("*/*.jsonl")})
    assert len(days) > 4, "some events arrive after the generated days"
    for day in [days[i] for i in (2, 0, 3, 1)]:
        pipeline.run(spark, settings, "all", DateSelection(day))
    pipeline.run(spark, settings, "all", DateSelection())
    return settings


def _landing_lines(settings: Settings, source: str) -> int:
    files = (settings.landing_dir / source).glob("*.jsonl")
    return sum(len(f.read_bytes().splitlines()) for f in files)


def test_every_landing_line_is_in_bronze_or_quarantine(spark: SparkSession, run: Settings) -> None:
    for source in SOURCES:
        lines = _landing_lines(run, source)
        in_bronze = count_rows(spark, run, f"bronze_{source}")
        quarantined = count_rows(spark, run, "bronze_quarantine", source=source)
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
        assert totals["rows_in"] == count_rows(spark, run, f"bronze_{source}")
        assert totals["rows_quarantined"] == count_rows(spark, run, "silver_quarantine", source=source)
        assert totals["rows_in"] == (
            totals["rows_quarantined"] + totals["rows_duplicate"] + totals["rows_written"]
        )
        if source != "users":
            assert totals["rows_written"] == count_rows(spark, run, silver.SOURCES[source].table)
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


def test_gold_equals_the_oracle_on_what_silver_holds(spark: SparkSession, run: Settings) -> None:
    """On generated data with faults, duplicates and arrivals moved back by a later run."""

    def events(logical: str, *values: str) -> list[tuple]:
        columns = ("user_key", "event_date", "_arrival_date", *values)
        return [tuple(r) for r in tables.read(spark, run.table(logical)).select(*columns).collect()]

    orders = events("silver_orders", "amount")
    deliveries = events("silver_deliveries", "promised_minutes", "actual_minutes")
    ratings = events("silver_ratings", "rating")
    # Gold moves on with the last arrival day of events (a users snapshot alone does not move it).
    ledger = tables.read(spark, run.table("ops_silver_batches")).filter(F.col("source") != "users")
    as_of = ledger.agg(F.max("arrival_date")).first()[0]
    features = tables.read(spark, run.table("gold_user_features"))
    rules = run.pipeline
    expected = features_oracle(orders, deliveries, ratings, as_of, rules.feature_windows_days,
                               rules.feature_version)
    assert_df_equality(features, spark.createDataFrame(expected, features.schema),
                       ignore_row_order=True, ignore_nullable=True)
    daily = tables.read(spark, run.table("gold_user_daily"))
    assert_df_equality(daily, spark.createDataFrame(daily_oracle(orders, deliveries, ratings), daily.schema),
                       ignore_row_order=True, ignore_nullable=True)


def test_day_by_day_in_shuffled_order_equals_full_gold(spark: SparkSession, run: Settings) -> None:
    gold_equals_full(spark, run)
    modes = [m[0] for m in tables.read(spark, run.table("ops_gold_runs")).orderBy("finished_at")
             .select("mode").collect()]
    # The runs up to the --full above: other tests may run the pipeline again after it.
    modes = modes[: len(modes) - modes[::-1].index("full")]
    # Full: the first run and --full. A day that moved arrivals back (updates
    # in silver's change feed) is an increment too; a day run again changes nothing.
    assert modes[0] == modes[-1] == "full" and "incremental" in modes, modes
    assert set(modes[1:-1]) <= {"incremental", "up_to_date"}, modes


def test_rerunning_changes_nothing(spark: SparkSession, run: Settings) -> None:
    names = [run.table(t) for t in run.tables if t.startswith(("bronze_", "silver_", "gold_"))]
    before = {name: tables.read(spark, name).collect() for name in names}
    # Not a commit either: rewriting the same rows, a ledger row for work already
    # done, or a gate run's results (the runs add no row, so no gate runs), would
    # show as a new version.
    every = [name for name in map(run.table, run.tables) if tables.exists(spark, name)]
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
    """Every personal value of the landing files: user and courier ids, emails, names and addresses."""
    found: set[str] = set()
    for source, fields in PERSONAL_FIELDS.items():
        for path in (settings.landing_dir / source).glob("*.jsonl"):
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    found.update(v for k, v in record.items() if k in fields and isinstance(v, str))
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
    assert count_rows(spark, settings, "ops_silver_batches") == 0
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


def test_a_batch_that_adds_no_row_is_not_gated(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Expectations on the whole set of rows fail on an empty one: gated, a batch of
    # duplicates only would fail on every run, whatever its data.
    settings = _with_contracts(base_settings, tmp_path, {
        "orders_in_bulk": "table: silver_orders\nexpectations:\n"
        "  - expect_table_row_count_to_be_between: {min_value: 1}\n"
        "  - expect_column_max_to_be_between: {column: amount, max_value: 1000}\n"
    })
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=3, users=15, days=1, start=day, faults=FaultRates.none())
    pipeline.ensure_tables(spark, settings)
    bronze.ingest(spark, settings, "order_placed", [day])
    silver.process(spark, settings, "order_placed", [day], pii_key(settings))
    written = count_rows(spark, settings, "silver_orders")
    assert written > 0
    # The feed sends the day's file again, its lines in another order: a new batch of copies.
    path = landing_file(settings.landing_dir, "order_placed", day)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(reversed(lines)))
    bronze.ingest(spark, settings, "order_placed", [day])
    with caplog.at_level("INFO", logger="lakeward"):
        result = silver.process(spark, settings, "order_placed", [day], pii_key(settings))
    assert "quality: orders_in_bulk not run for order_placed:2026-03-01: no rows to add" in caplog.messages
    assert count_rows(spark, settings, "silver_orders") == written
    ledger = tables.read(spark, settings.table("ops_silver_batches")).collect()
    assert sorted((r["rows_written"], r["rows_duplicate"]) for r in ledger) == [(0, len(lines)), (written, 0)]
    assert result.rows_written == 0
    gated = tables.read(spark, settings.table("ops_quality_results")).collect()
    assert len(gated) == 2 and all(r["success"] for r in gated)


def test_a_failing_gate_keeps_what_the_other_sources_wrote(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
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
    # Only the gate's log lines: the first import of Great Expectations in a process logs
    # Python's DeprecationWarnings, and this test may be the first to import it.
    caplog.clear()
    with caplog.at_level("ERROR", logger="lakeward"), pytest.raises(quality.GateFailed) as failed:
        silver.process_sources(spark, settings, pending, pii_key(settings))
    # Every failed gate is named, in the error and in the log.
    assert set(failed.value.failures) == {"strict_ratings", "strict_deliveries"}
    assert "quality gate strict_ratings failed: expect_column_values_to_be_between" in str(failed.value)
    assert "quality gate strict_deliveries failed: expect_column_values_to_be_between" in str(failed.value)
    assert {r.getMessage().split()[1] for r in caplog.records} == {"strict_ratings", "strict_deliveries"}
    orders = count_rows(spark, settings, "silver_orders")
    assert orders == count_rows(spark, settings, "bronze_order_placed") > 0
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
    # A retry whose write fails after its gate passed (say another run committed first) wrote
    # nothing: its gate result is not kept, as if the batch had passed into silver.
    write = silver._write

    def concurrent_commit(spark: SparkSession, name: str, source: str, *args: Any) -> None:
        if source == "rating_submitted":
            raise RuntimeError("simulated DELTA_CONCURRENT_APPEND")
        write(spark, name, source, *args)

    monkeypatch.setattr(silver, "_write", concurrent_commit)
    with pytest.raises(RuntimeError, match="simulated"):
        silver.process_sources(spark, settings, {"rating_submitted": [day]}, pii_key(settings))
    monkeypatch.undo()
    assert count_rows(spark, settings, "ops_quality_results") == len(results)
    results_by_source = {r.source: r for r in silver.process_sources(
        spark, settings, {"rating_submitted": [day]}, pii_key(settings)
    )}
    assert results_by_source["rating_submitted"].rows_written > 0
    assert tables.current_version(spark, settings.table("silver_orders")) == orders_version
    results_table = tables.read(spark, settings.table("ops_quality_results"))
    gated = results_table.filter(F.col("suite") == "strict_ratings")
    assert sorted(r["gate_passed"] for r in gated.collect()) == [False, True]


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
