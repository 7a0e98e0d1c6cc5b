"""Tables dropped, emptied or left half made outside a run: the next run makes them whole again."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import bronze, pipeline, root_lock, silver, tables
from lakeward.config import Settings
from lakeward.pipeline import DateSelection
from lakeward.sources.bitebridge import FaultRates, generate, landing_file
from tests.conftest import isolated
from tests.pipeline_checks import FAULTS, drop_table, gold_equals_full, silver_ledger

pytestmark = pytest.mark.integration


def _drop(spark: SparkSession, settings: Settings, *logical: str) -> None:
    for name in logical:
        drop_table(spark, settings.table(name))


def _bronze_and_silver(spark: SparkSession, settings: Settings, day: date) -> None:
    """A day's run for tests about bronze and silver tables: gold reads neither's losses."""
    for stage in ("bronze", "silver"):
        pipeline.run(spark, settings, stage, DateSelection(day))


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
    gold_equals_full(spark, settings)

    _drop(spark, settings, "gold_user_features")
    caplog.clear()
    with caplog.at_level("INFO", logger="lakeward"):
        assert pipeline.run_gold(spark, settings, DateSelection()).mode == "full"
    assert "created again since the last run" in caplog.text
    gold_equals_full(spark, settings)


def test_a_silver_table_restored_with_its_rows_is_kept_and_one_emptied_is_filled_again(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The test for a lost silver table is its row count, not its version: a table put back
    from a copy (a new table at version 0 holding every row) keeps its ledger, and one
    emptied by ``DELETE`` gets every batch of its source again from bronze."""
    settings = isolated(base_settings, tmp_path)
    generate(settings.landing_dir, seed=6, users=30, days=3, start=date(2026, 3, 1), faults=FAULTS)
    days = sorted({date.fromisoformat(f.stem) for f in settings.landing_dir.glob("*/*.jsonl")})
    _bronze_and_silver(spark, settings, days[0])
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

    # Two tables restored to a version before the last day's rows, a third emptied, in one run:
    # the short batches and the emptied source are taken again.
    restored = [name, settings.table("silver_ratings")]
    emptied = settings.table("silver_deliveries")
    before_last_day = [tables.current_version(spark, table) for table in restored]
    _bronze_and_silver(spark, settings, days[2])

    def held_rows(table: str) -> list[Row]:
        return sorted(tables.read(spark, table).select("event_id", "_batch_id").collect())

    whole = {table: held_rows(table) for table in [*restored, emptied]}
    for table, version in zip(restored, before_last_day, strict=True):
        DeltaTable.forName(spark, table).restoreToVersion(version)
        assert len(held_rows(table)) < len(whole[table])
    DeltaTable.forName(spark, emptied).delete()
    with caplog.at_level("INFO", logger="lakeward"):
        pipeline.run_silver(spark, settings, DateSelection())
    for table in restored:
        assert f"silver: {table} holds" in caplog.text
    assert "1 batch(es) short" in caplog.text and f"no rows in {emptied}" in caplog.text
    batches = tables.read(spark, ledger_name)
    assert batches.groupBy("batch_id").count().filter("count > 1").count() == 0, "a batch recorded twice"
    for source in ("order_placed", "rating_submitted", "delivery_completed"):
        table = settings.table(silver.SOURCES[source].table)
        assert held_rows(table) == whole[table]
        [written] = batches.filter(F.col("source") == source).agg(F.sum("rows_written")).first()
        assert written == len(whole[table])


def test_table_properties_lost_outside_lakeward_are_set_again_and_nothing_else_is_touched(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bronze table replaced by ``CREATE OR REPLACE TABLE ... AS SELECT`` loses the properties
    that keep statistics off its personal columns and mark whose rows it holds; a silver table
    altered loses the change feed gold reads. The next run sets them again, once; tables whose
    properties are as their spec says get no commit."""
    settings = isolated(base_settings, tmp_path)
    pipeline.ensure_tables(spark, settings)
    specs = {spec.name: spec for spec in pipeline.table_specs(settings)}

    def versions() -> dict[str, int]:
        return {name: tables.current_version(spark, name) for name in specs}

    created = versions()
    pipeline.ensure_tables(spark, settings)
    assert versions() == created, "no table of a fresh data root is altered"

    users, orders = settings.table("bronze_users"), settings.table("silver_orders")
    spark.sql(f"CREATE OR REPLACE TABLE {tables.quoted_name(users)} USING delta AS "
              f"SELECT * FROM {tables.quoted_name(users)}")
    spark.sql(f"ALTER TABLE {tables.quoted_name(orders)} SET TBLPROPERTIES "
              "('delta.enableChangeDataFeed' = 'false', 'owner.note' = 'kept')")
    assert "delta.dataSkippingStatsColumns" not in tables.properties(spark, users)
    with caplog.at_level("WARNING", logger="lakeward.tables"):
        pipeline.ensure_tables(spark, settings)
    lost = "delta.dataSkippingStatsColumns, lakeward.personal_columns, lakeward.personal_data"
    assert f"{users}: its table properties {lost}, lakeward.subject_column are missing" in caplog.text
    assert "statistics of its personal columns" in caplog.text
    assert f"{orders}: its table properties delta.enableChangeDataFeed are missing" in caplog.text
    for name in (users, orders):
        held = tables.properties(spark, name)
        assert held.items() >= specs[name].delta_properties().items()
    assert tables.properties(spark, orders)["owner.note"] == "kept"
    altered = versions()
    assert {name for name in specs if altered[name] != created[name]} == {users, orders}
    caplog.clear()
    pipeline.ensure_tables(spark, settings)
    assert versions() == altered and "table properties" not in caplog.text


def test_a_column_added_to_a_silver_table_is_left_null_and_one_dropped_stops_its_source(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """Silver's writes name their columns, so one a user added gets nulls. A column silver
    writes, gone (dropped under column mapping), stops that source with what to do, rather
    than write rows without its values; the table dropped, the next run fills it again."""
    settings = isolated(base_settings, tmp_path)
    generate(settings.landing_dir, seed=7, users=80, days=3, start=date(2026, 3, 1), faults=FaultRates.none())
    days = sorted({date.fromisoformat(f.stem) for f in settings.landing_dir.glob("*/*.jsonl")})
    # Bronze once for every day: only silver's writes are checked here.
    pipeline.run(spark, settings, "bronze", DateSelection())
    pipeline.run(spark, settings, "silver", DateSelection(days[0]))
    orders = settings.table("silver_orders")
    first = tables.read(spark, orders).count()
    for name in (orders, settings.table("silver_users"), settings.table("silver_quarantine"),
                 settings.table("ops_silver_batches")):
        spark.sql(f"ALTER TABLE {tables.quoted_name(name)} ADD COLUMNS (note STRING)")
    pipeline.run(spark, settings, "silver", DateSelection(days[1]))
    held = tables.read(spark, orders)
    second = held.count()
    assert second > first
    assert held.filter(F.col("note").isNotNull()).count() == 0

    spark.sql(f"ALTER TABLE {tables.quoted_name(orders)} SET TBLPROPERTIES ('delta.minReaderVersion' = '2', "
              "'delta.minWriterVersion' = '5', 'delta.columnMapping.mode' = 'name')")
    spark.sql(f"ALTER TABLE {tables.quoted_name(orders)} DROP COLUMN tip_amount")
    with pytest.raises(silver.SilverColumnsMissingError, match=rf"{orders} lacks the column\(s\) tip_amount"):
        pipeline.run(spark, settings, "silver", DateSelection(days[2]))
    assert silver_ledger(spark, settings, "order_placed", days[2]) == []
    assert silver_ledger(spark, settings, "users", days[2]) != [], "the other sources are written"

    drop_table(spark, orders)
    pipeline.run(spark, settings, "silver", DateSelection())
    [written] = tables.read(spark, settings.table("ops_silver_batches")).filter(
        F.col("source") == "order_placed").agg(F.sum("rows_written")).first()
    assert written == tables.read(spark, orders).count() > second


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
    _bronze_and_silver(spark, settings, days[0])
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
        _bronze_and_silver(spark, settings, days[2])
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
    # Day 2, refused before, now goes through silver whole. No bronze run first: one would
    # repair a shortfall left behind before the check below could see it.
    pipeline.run(spark, settings, "silver", DateSelection(days[1]))
    silver_ledger = tables.read(spark, settings.table("ops_silver_batches"))
    assert silver_ledger.groupBy("batch_id").count().filter("count > 1").count() == 0, "a batch taken twice"
    day_2 = silver_ledger.filter(F.col("batch_id") == day_2_batch).first()
    assert day_2["rows_in"] == ledger.filter(F.col("batch_id") == day_2_batch).first()["rows_written"] > 0
    # Nothing more to restore: the next run finds no shortfall.
    assert bronze.find_lost(spark, settings) == bronze.Restore(balanced=True)


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


def test_a_table_another_run_is_creating_on_a_shared_catalog_is_used_not_removed(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a cluster's metastore two runs may create a table at once: the one that finds the
    other's first commit waits for it to reach the catalog, and uses it. Removing that commit
    as a stopped creation's left the other run's catalog entry without files."""
    settings = isolated(base_settings, tmp_path)
    spec = silver.silver_spec(settings, "order_placed")
    schema, table = spec.name.rsplit(".", 1)
    tables.ensure_schema(spark, schema)
    location = Path(urlparse(spark.catalog.getDatabase(schema).locationUri).path) / table
    monkeypatch.setattr(root_lock, "holds_a_data_root", lambda: False)  # as in cluster mode
    # The other run: its first commit now, its catalog entry a moment later.
    DeltaTable.createIfNotExists(spark).location(str(location)).addColumns(spec.schema).execute()
    first_commit = location / "_delta_log" / "00000000000000000000.json"
    written = first_commit.stat().st_ino, first_commit.stat().st_mtime_ns
    registering: list[threading.Timer] = []
    seconds_since_written = tables._seconds_since_written

    def registered_while_waited_for(path: Path) -> float:
        # The other run registers its table once this one waits for it, however
        # long this one took to get there.
        if not registering:
            registering.append(threading.Timer(
                1.0, lambda: spark.catalog.createTable(spec.name, path=str(location), source="delta")
            ))
            registering[0].start()
        return seconds_since_written(path)

    monkeypatch.setattr(tables, "_seconds_since_written", registered_while_waited_for)
    try:
        with caplog.at_level("INFO", logger="lakeward.tables"):
            tables.ensure_tables(spark, [spec])
    finally:
        for timer in registering:
            timer.join()
    assert registering, "did not wait for the other run"
    monkeypatch.setattr(tables, "_seconds_since_written", seconds_since_written)
    assert f"{spec.name}: created by another run at the same time" in caplog.text
    assert "creating it again" not in caplog.text
    assert (first_commit.stat().st_ino, first_commit.stat().st_mtime_ns) == written
    assert tables.read(spark, spec.name).count() == 0

    # A first commit nobody registers within the grace was left by a run that stopped.
    monkeypatch.setattr(tables, "CREATION_GRACE_SECONDS", 1.0)
    other = silver.silver_spec(settings, "rating_submitted")
    other_location = location.parent / other.name.rsplit(".", 1)[1]
    DeltaTable.createIfNotExists(spark).location(str(other_location)).addColumns(other.schema).execute()
    caplog.clear()
    with caplog.at_level("INFO", logger="lakeward.tables"):
        tables.ensure_tables(spark, [other])
    assert "creating it again" in caplog.text and tables.exists(spark, other.name)


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
    [(_, _, duplicates, written)] = silver_ledger(spark, settings, "users", day)
    assert duplicates == 0 and written == users.count() - 1
    assert users.filter(F.col("_batch_id").isNull()).select("user_key").collect() == [Row(user_key="k-old")]
