"""The pipeline after a crash, a retry or a landing file sent again: nothing lost, nothing counted twice."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import bronze, pipeline, quality, silver, tables
from lakeward.config import Settings
from lakeward.pipeline import DateSelection
from lakeward.privacy.keys import pii_key
from lakeward.privacy.pseudonymize import hmac_sha256
from lakeward.sources.bitebridge import SOURCES, FaultRates, generate, landing_file
from tests.conftest import isolated
from tests.pipeline_checks import FAULTS, count_rows, gold_equals_full, silver_ledger

pytestmark = pytest.mark.integration


def test_crash_between_write_and_ledger_adds_nothing_twice(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = isolated(base_settings, tmp_path)
    generate(settings.landing_dir, seed=5, users=20, days=2, start=date(2026, 3, 1), faults=FAULTS)
    bronze.ensure_tables(spark, settings)
    days = [date(2026, 3, 1), date(2026, 3, 2)]

    name = settings.table("bronze_order_placed")
    # A write that puts other rows than the good lines counted before it (a file
    # changed while Spark read it again) records no batch; the next run redoes it.
    bronze_rows = bronze.bronze_rows
    monkeypatch.setattr(bronze, "bronze_rows", lambda *a: bronze_rows(*a).filter(F.col("_line_no") > 3))
    with pytest.raises(bronze.ReconciliationError, match=rf"'{name}': \(\d+, \d+\)}}; no ledger row"):
        bronze.ingest(spark, settings, "order_placed", days)
    assert count_rows(spark, settings, "ops_ingestion_batches") == 0
    assert tables.read(spark, name).count() == count_rows(spark, settings, "bronze_quarantine") == 0
    monkeypatch.undo()

    def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed between the data write and the ledger write")

    monkeypatch.setattr(bronze, "record_batches", crash)
    with pytest.raises(SystemExit):
        bronze.ingest(spark, settings, "order_placed", days)
    assert tables.read(spark, name).count() > 0  # the data write happened
    assert count_rows(spark, settings, "ops_ingestion_batches") == 0
    monkeypatch.undo()

    # The retry covers a different set of files than the crashed run: one, then both.
    bronze.ingest(spark, settings, "order_placed", days[:1])
    result = bronze.ingest(spark, settings, "order_placed", days)
    # Only these days' files: late lines may also have made a third arrival day.
    lines = sum(len(landing_file(settings.landing_dir, "order_placed", d).read_bytes().splitlines())
                for d in days)
    assert result.skipped == 1
    rows = tables.read(spark, name).count()
    quarantined = count_rows(spark, settings, "bronze_quarantine", source="order_placed")
    assert rows + quarantined == lines
    assert tables.read(spark, name).groupBy("_batch_id", "_line_no").count().filter("count > 1").count() == 0
    again = bronze.ingest(spark, settings, "order_placed", days)
    assert again.skipped == 2 and tables.read(spark, name).count() == rows


def test_a_landing_file_replaced_after_it_was_hashed_is_recorded_with_the_content_spark_read(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file rewritten to as many lines and bytes: before Spark's read, nothing is written (its rows
    would stand under the checksum of other content); after it, the rows read are kept under their
    checksum, and the next run takes the new content as a new batch."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=20, days=2, start=days[0], faults=FAULTS)
    bronze.ensure_tables(spark, settings)
    path = landing_file(settings.landing_dir, "order_placed", days[1])
    before = path.read_bytes()
    # Same size, same lines: every order of 3 items becomes one of 4.
    after = before.replace(b'"items":3,', b'"items":4,')
    assert after != before and len(after) == len(before)
    name = settings.table("bronze_order_placed")
    ledger = settings.table("ops_ingestion_batches")

    read_files = bronze._read_files

    def replaced_before_read(*args: object) -> object:
        path.write_bytes(after)
        return read_files(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bronze, "_read_files", replaced_before_read)
    with pytest.raises(bronze.ReconciliationError,
                       match=r"order_placed/2026-03-02\.jsonl: the lines Spark read"):
        bronze.ingest(spark, settings, "order_placed", days)
    monkeypatch.undo()
    assert tables.read(spark, name).count() == tables.read(spark, ledger).count() == 0

    path.write_bytes(before)
    append = tables.append_side_by_side

    def replaced_after_read(*args: object) -> object:
        path.write_bytes(after)
        return append(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(tables, "append_side_by_side", replaced_after_read)
    bronze.ingest(spark, settings, "order_placed", days)
    monkeypatch.undo()
    result = bronze.ingest(spark, settings, "order_placed", days)
    assert (result.files, result.skipped) == (2, 1)
    checksums = {r["checksum"]: r for r in tables.read(spark, ledger).collect()}
    assert set(checksums) >= {hashlib.sha256(before).hexdigest(), hashlib.sha256(after).hexdigest()}
    for content in (before, after):
        recorded = checksums[hashlib.sha256(content).hexdigest()]
        batch = F.col("_batch_id") == recorded["batch_id"]
        rows = tables.read(spark, name).filter(batch)
        quarantined = tables.read(spark, settings.table("bronze_quarantine")).filter(batch).count()
        assert rows.count() == recorded["rows_written"]
        assert rows.count() + quarantined == len(content.splitlines()) == recorded["lines"]
        # The rows are of the content the checksum is of.
        assert rows.filter(F.col("items") == ("4" if content is after else "3")).count() > 0


def test_two_bronze_runs_that_overlap_keep_one_copy_of_each_file(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a cluster no lock keeps two runs apart. Run B looks up the ledger, finds both days
    pending and removes what a crashed run could have left of them; run A then ingests and
    records day 1; B appends both days. The ledger takes one
    row per batch, and B removes its own copies of the batch A recorded first."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=7, users=60, days=2, start=days[0], faults=FAULTS)
    bronze.ensure_tables(spark, settings)
    append = tables.append_side_by_side

    def run_a_first(*args: object) -> list[int]:
        monkeypatch.setattr(tables, "append_side_by_side", append)
        bronze.ingest(spark, settings, "order_placed", days[:1])
        return append(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(tables, "append_side_by_side", run_a_first)
    with caplog.at_level(logging.WARNING, logger="lakeward.bronze"):
        b = bronze.ingest(spark, settings, "order_placed", days)
    assert "another run ingested 1 of these files at the same time" in caplog.text
    name = settings.table("bronze_order_placed")
    lines = sum(len(landing_file(settings.landing_dir, "order_placed", d).read_bytes().splitlines())
                for d in days)
    rows = tables.read(spark, name).count()
    assert rows + count_rows(spark, settings, "bronze_quarantine", source="order_placed") == lines
    assert tables.read(spark, name).groupBy("_batch_id", "_line_no").count().filter("count > 1").count() == 0
    ledger = tables.read(spark, settings.table("ops_ingestion_batches")).collect()
    assert len(ledger) == len({r["batch_id"] for r in ledger}) == 2
    # Each batch's rows are those of the run its ledger row names, and add up to it.
    for r in ledger:
        batch = tables.read(spark, name).filter(F.col("_batch_id") == r["batch_id"])
        stamps = {x["_ingested_at"] for x in batch.select("_ingested_at").distinct().collect()}
        assert stamps == {r["ingested_at"]}
        assert batch.count() == r["rows_written"] > 0
    # B counts as written only the batch it kept, and the other as skipped.
    assert b.rows_written == {r["arrival_date"]: r["rows_written"] for r in ledger}[days[1]]
    assert b.skipped == 1
    assert bronze.ingest(spark, settings, "order_placed", days).skipped == 2


def test_a_run_that_removed_the_unrecorded_rows_of_a_run_that_then_recorded_keeps_its_own(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a cluster, run A appends a file's rows; run B, starting before A records them, takes
    them for an interrupted run's and removes them, then appends its own; A records the file
    first. B's copy is then the only one: it stays, and silver takes it."""
    settings = isolated(base_settings, tmp_path)
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=8, users=40, days=1, start=day, faults=FAULTS)
    pipeline.ensure_tables(spark, settings)
    record = bronze.record_batches
    held: list[tuple] = []

    def a_pauses_before_its_ledger(*args: object) -> None:
        held.append(args)
        raise SystemExit("run A: paused before its ledger write")

    monkeypatch.setattr(bronze, "record_batches", a_pauses_before_its_ledger)
    with pytest.raises(SystemExit):
        bronze.ingest(spark, settings, "order_placed", [day])
    name = settings.table("bronze_order_placed")
    [a_stamp] = [r[0] for r in tables.read(spark, name).select("_ingested_at").distinct().collect()]

    def a_records_first(*args: object) -> set[str]:
        record(*held[0])
        return record(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bronze, "record_batches", a_records_first)
    with caplog.at_level(logging.WARNING, logger="lakeward.bronze"):
        bronze.ingest(spark, settings, "order_placed", [day])
    monkeypatch.undo()

    lines = len(landing_file(settings.landing_dir, "order_placed", day).read_bytes().splitlines())
    rows = tables.read(spark, name)
    quarantined = count_rows(spark, settings, "bronze_quarantine", source="order_placed")
    assert rows.count() + quarantined == lines and rows.count() > 0
    assert "removing" in caplog.text and "this run's rows of those files stay" in caplog.text
    assert rows.groupBy("_line_no").count().filter("count > 1").count() == 0
    [recorded] = tables.read(spark, settings.table("ops_ingestion_batches")).collect()
    assert recorded["ingested_at"] == a_stamp
    assert {r[0] for r in rows.select("_ingested_at").distinct().collect()} != {a_stamp}
    assert (recorded["rows_written"], recorded["rows_quarantined"]) == (rows.count(), quarantined)
    # Nothing is short or held twice for the next run, and silver takes every row.
    written = rows.count()
    pipeline.run_bronze(spark, settings, DateSelection(day))
    assert tables.read(spark, name).count() == written
    pipeline.run_silver(spark, settings, DateSelection(day))
    [(rows_in, *_)] = silver_ledger(spark, settings, "order_placed", day)
    assert rows_in == recorded["rows_written"]


def test_rows_of_a_crashed_day_whose_files_are_gone_are_recorded_by_a_run_of_another_day(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run died between its data and ledger writes, and the day's landing files were then
    taken away: bronze holds the only copy of those rows, so a run of another day records them
    as bronze holds them, and silver takes them. A row put in by hand is left alone."""
    settings = isolated(base_settings, tmp_path)
    first, second = date(2026, 3, 1), date(2026, 3, 2)
    generate(settings.landing_dir, seed=6, users=20, days=2, start=first, faults=FAULTS)
    bronze.ensure_tables(spark, settings)

    def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed between the data write and the ledger write")

    monkeypatch.setattr(bronze, "record_batches", crash)
    with pytest.raises(SystemExit):
        pipeline.run_bronze(spark, settings, DateSelection(first))
    monkeypatch.undo()
    names = [*(settings.table(f"bronze_{s}") for s in SOURCES), settings.table("bronze_quarantine")]
    crashed = {name: tables.read(spark, name).count() for name in names}
    batches = {r["_batch_id"] for r in bronze._rows_where(spark, names, F.lit(True)).collect()}
    assert batches
    for source in SOURCES:  # the crashed day's files are taken away before any retry
        landing_file(settings.landing_dir, source, first).unlink()
    # A row put in by hand, without a date, is no lakeward run's and is left alone.
    quarantine = settings.table("bronze_quarantine")
    row = {"source": "users", "reason": "by hand", "raw_line": "{}", "_batch_id": "by-hand"}
    by_hand = spark.createDataFrame([row], tables.read(spark, quarantine).schema)
    by_hand.write.format("delta").mode("append").saveAsTable(quarantine)

    pipeline.run_bronze(spark, settings, DateSelection(second))
    ledger = tables.read(spark, settings.table("ops_ingestion_batches"))
    recorded = [r["batch_id"] for r in ledger.collect()]
    assert {r["batch_id"] for r in ledger.filter(F.col("arrival_date") == first).collect()} == batches
    for name in names:
        held = tables.read(spark, name).filter(F.col("_arrival_date").isNotNull())
        assert held.filter(~F.col("_batch_id").isin(recorded)).count() == 0, name
        assert held.filter(F.col("_arrival_date") == first).count() == crashed[name], name
    assert tables.read(spark, quarantine).filter(F.col("_batch_id") == "by-hand").count() == 1
    assert bronze.find_lost(spark, settings).balanced is False, "the row by hand is no ledger's"
    pipeline.run(spark, settings, "silver", DateSelection())
    assert silver_ledger(spark, settings, "order_placed", first) != []


def test_raw_courier_ids_a_silver_table_from_before_holds_are_replaced_by_keyed_hashes(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``silver.deliveries`` written by a lakeward that kept ``courier_id`` as sent: the next
    silver run rewrites it once with ``courier_key``, and gold, after the rewrite, still
    equals a full recompute."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=8, users=20, days=2, start=days[0], faults=FaultRates.none())
    pipeline.run(spark, settings, "all", DateSelection(days[0]))
    name = settings.table("silver_deliveries")
    sent = tables.read(spark, settings.table("bronze_delivery_completed")).select("event_id", "courier_id")
    held = tables.read(spark, name)
    as_before = held.join(sent, "event_id").select(
        *[c if c != "courier_key" else "courier_id" for c in held.columns]
    )
    tables.overwrite(as_before.localCheckpoint(), name, replace_schema=True)

    with caplog.at_level(logging.WARNING, logger="lakeward.silver"):
        pipeline.run(spark, settings, "all", DateSelection(days[1]))

    assert "courier_id" in caplog.text
    assert "courier_id" not in tables.read(spark, name).columns
    stored = tables.read(spark, name).select("event_id", "_arrival_date", "courier_key")
    assert {r[0] for r in stored.select("_arrival_date").distinct().collect()} == set(days)
    key = pii_key(settings)
    expected = sent.select("event_id", hmac_sha256(F.col("courier_id"), key).alias("courier_key"))
    # Every stored event's key is the hash of the id bronze holds for it.
    assert stored.join(expected, ["event_id", "courier_key"]).count() == stored.count() > 0
    gold_equals_full(spark, settings)


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
    assert count_rows(spark, settings, "bronze_order_placed") == len(lines) + 1


def test_line_numbers_hold_when_files_are_read_in_many_splits(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Splits of 256 bytes, a line or two each (some hold no line's start), for every source at once.

    The split size changes once the lines are counted, as the cores a cluster
    has may change: a scan planned again would be cut otherwise. Files and
    splits are joined, not looked up in an expression (the other tests do that).
    """
    monkeypatch.setattr(bronze, "_INLINE_KEYS", 0)
    line_bases = bronze.line_bases

    def resized(*args: object) -> object:
        spark.conf.set("spark.sql.files.maxPartitionBytes", "384")
        return line_bases(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bronze, "line_bases", resized)
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=40, days=2, start=days[0], faults=FAULTS)
    paths = {source: [landing_file(settings.landing_dir, source, day) for day in days] for source in SOURCES}
    assert all(path.stat().st_size > 3 * 256 for path in paths["order_placed"] + paths["users"])
    bronze.ensure_tables(spark, settings)
    confs = {"spark.sql.files.maxPartitionBytes": "256", "spark.sql.files.openCostInBytes": "0"}
    before = {key: spark.conf.get(key) for key in confs}
    try:
        for key, value in confs.items():
            spark.conf.set(key, value)
        results = bronze.ingest_sources(spark, settings, list(SOURCES), days)
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)
    assert sum(r.rows_quarantined for r in results) > 0
    text = {str(p.relative_to(settings.data_root)): p.read_bytes().decode().split("\n")
            for source_paths in paths.values() for p in source_paths}
    quarantined = tables.read(spark, settings.table("bronze_quarantine")).collect()
    assert [text[r["_source_file"]][r["_line_no"] - 1] for r in quarantined] == [r["raw_line"]
                                                                                 for r in quarantined]
    for source in SOURCES:
        rows = tables.read(spark, settings.table(f"bronze_{source}")).collect()
        # The line itself, parsed: a duplicated line would match its copy's number as well.
        for r in rows:
            line = json.loads(text[r["_source_file"]][r["_line_no"] - 1])
            for key in ("event_id", "user_id"):
                # Bronze keeps a string as is and any other value as its JSON text.
                value = line.get(key)
                assert r[key] == (value if value is None or isinstance(value, str) else json.dumps(value))
        expected = sum(len(text[str(p.relative_to(settings.data_root))]) - 1 for p in paths[source])
        assert len(rows) + sum(1 for r in quarantined if r["source"] == source) == expected, source
        assert len({(r["_source_file"], r["_line_no"]) for r in rows}) == len(rows), source


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
    assert silver_ledger(spark, settings, "order_placed", days[0]) == [(n, 0, 0, n), (n + 1, 0, n, 1)]
    assert silver.pending_dates(spark, settings) == nothing
    # The date again: every row is one silver has, so no commit, and the ledger keeps its counts.
    # Nor a gate run: the rows of recorded batches are not gated again, so there is nothing to gate.
    unchanged = [settings.table(t) for t in ("silver_orders", "ops_quality_results")]
    versions = [tables.current_version(spark, name) for name in unchanged]
    results = pipeline.run_silver(spark, settings, DateSelection(days[0]))
    assert {(r.rows_in, r.rows_written) for r in results} == {(0, 0)}
    assert [tables.current_version(spark, name) for name in unchanged] == versions
    assert silver_ledger(spark, settings, "order_placed", days[0]) == [(n, 0, 0, n), (n + 1, 0, n, 1)]


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

    assert silver_ledger(spark, settings, "order_placed", days[1]) == [(0, 0, 0, 0)]
    name = settings.table("gold_user_features")
    features = tables.read(spark, name, version=tables.current_version(spark, name))
    assert features.agg(F.max("feature_date")).first()[0] == days[1]
    assert features.filter(F.col("feature_date") == days[1]).count() == features.filter(
        F.col("feature_date") == days[0]
    ).count() > 0
    pipeline.run(spark, settings, "gold", DateSelection(full=True))
    assert_df_equality(features, tables.read(spark, name), ignore_row_order=True, ignore_nullable=True)


def test_a_silver_ledger_from_before_batch_ids_still_marks_its_dates_done(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data root whose ``ops.silver_batches`` has no ``batch_id`` and no ``key_fingerprint``
    column: its rows cover the batches of their date ingested before them, and the next silver
    run adds the columns. From then on, a run with another key is refused."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=20, days=2, start=days[0], faults=FaultRates.none())
    old_schema = T.StructType(
        [f for f in silver.LEDGER_SCHEMA.fields if f.name not in ("batch_id", "key_fingerprint")]
    )
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
    assert silver_ledger(spark, settings, "order_placed", days[0]) == [(1, 0, 0, 1)]
    # The old row still covers its date when the date is run again.
    pipeline.run_silver(spark, settings, DateSelection(days[0]))
    assert silver_ledger(spark, settings, "order_placed", days[0]) == [(1, 0, 0, 1)]

    variable = settings.privacy.pii_key_env
    key = pii_key(settings).decode()
    monkeypatch.setenv(variable, "another key, long enough to be one")
    versions = {source: tables.current_version(spark, settings.table(spec.table))
                for source, spec in silver.SOURCES.items()}
    refused = r"(?=.*delivery_completed)(?=.*users).*second user_key"
    with pytest.raises(silver.KeyChangedError, match=refused) as got:
        pipeline.run_silver(spark, settings, DateSelection(days[1]))
    assert "removed" not in str(got.value) and "whitespace" not in str(got.value)
    # The key as a secret file gives it, with its newline: the message says what differs.
    monkeypatch.setenv(variable, key + "\n")
    with pytest.raises(silver.KeyChangedError, match=r"ends with whitespace \(a newline from a file\?\)"):
        pipeline.run_silver(spark, settings, DateSelection(days[1]))
    # No key at all: local work generates one, and takes it away again once refused.
    monkeypatch.delenv(variable)
    key_file = settings.data_root / "pii.key"
    withdrawn = f"{re.escape(str(key_file))} was missing, .* now removed again"
    with pytest.raises(silver.KeyChangedError, match=withdrawn):
        pipeline.run_silver(spark, settings, DateSelection(days[1]))
    assert not key_file.exists()
    assert versions == {source: tables.current_version(spark, settings.table(spec.table))
                        for source, spec in silver.SOURCES.items()}


def test_an_ingestion_ledger_with_the_old_column_names_is_renamed_and_keeps_its_rows(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """``ops.ingestion_batches`` once named ``size`` and ``checksum`` ``size_bytes`` and
    ``checksum_sha256``: the next bronze run renames them, and the files it records stay done."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=20, days=2, start=days[0], faults=FaultRates.none())
    name = settings.table("ops_ingestion_batches")
    pipeline.ensure_tables(spark, settings)
    pipeline.run_bronze(spark, settings, DateSelection(days[0]))
    first = tables.read(spark, name).orderBy("path").collect()
    assert len(first) == len(SOURCES)
    for row in first:
        landed = settings.data_root / row.path
        assert row.size == landed.stat().st_size
        assert row.checksum == hashlib.sha256(landed.read_bytes()).hexdigest()
    day_one_orders = count_rows(spark, settings, "bronze_order_placed")
    tables.rename_columns(spark, name, {"size": "size_bytes", "checksum": "checksum_sha256"})

    table_id, properties = tables.table_id(spark, name), tables.properties(spark, name)

    pipeline.run_bronze(spark, settings, DateSelection())
    ledger = tables.read(spark, name)
    assert ledger.columns == bronze.LEDGER_SCHEMA.fieldNames()
    assert (tables.table_id(spark, name), tables.properties(spark, name)) == (table_id, properties)
    assert ledger.filter(F.col("arrival_date") == days[0]).orderBy("path").collect() == first
    assert ledger.filter(F.col("arrival_date") == days[1]).count() == len(SOURCES)
    day_one_file = next(row.path for row in first if row.source == "order_placed")
    assert count_rows(spark, settings, "bronze_order_placed", _source_file=day_one_file) == day_one_orders


def test_what_a_crash_left_of_a_file_changed_or_removed_since_is_recorded_as_bronze_holds_it(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rows a crashed run wrote without their ledger rows, whose landing files were then changed
    or removed: bronze holds their only copy, so the retry records them as it holds them rather
    than remove them (as a dropped ledger would have every file's rows), and writes the changed
    file as the new batch it is. Restored after the ledger was lowered to what a short batch kept,
    a table's rows are recorded again, and the next run finds bronze balanced."""
    settings = isolated(base_settings, tmp_path)
    days = [date(2026, 3, 1), date(2026, 3, 2)]
    generate(settings.landing_dir, seed=5, users=20, days=2, start=days[0], faults=FAULTS)
    bronze.ensure_tables(spark, settings)
    monkeypatch.setattr(bronze, "record_batches", lambda *args, **kwargs: sys.exit("killed"))
    with pytest.raises(SystemExit):
        bronze.ingest(spark, settings, "order_placed", days)
    monkeypatch.undo()
    orders, quarantine = settings.table("bronze_order_placed"), settings.table("bronze_quarantine")

    def held() -> dict[str, int]:
        rows = bronze._rows_where(spark, [orders, quarantine], F.col("_batch_id").startswith("order_placed-"))
        return {r["_batch_id"]: r["count"] for r in rows.groupBy("_batch_id").count().collect()}

    crashed = held()
    changed, removed = (landing_file(settings.landing_dir, "order_placed", d) for d in days)
    first_line = changed.read_bytes().splitlines(keepends=True)[0]
    with changed.open("ab") as fh:
        fh.write(first_line)  # sent again with one more line: a new checksum, a new batch
    removed.unlink()

    with caplog.at_level(logging.WARNING, logger="lakeward.bronze"):
        results = pipeline.run_bronze(spark, settings, DateSelection())
    assert "2 batch(es) whose landing files are gone or changed" in caplog.text
    result = next(r for r in results if r.source == "order_placed")
    left = sorted((settings.landing_dir / "order_placed").glob("*.jsonl"))  # late lines may make a third day
    assert changed in left and removed not in left and (result.files, result.skipped) == (len(left), 0)
    ledger_name = settings.table("ops_ingestion_batches")
    ledger = {r["batch_id"]: r for r in tables.read(spark, ledger_name)
              .filter(F.col("source") == "order_placed").collect()}
    now = held()
    assert set(now) == set(ledger) and set(crashed) < set(now), "every batch bronze holds is recorded"
    for batch, rows in crashed.items():
        assert now[batch] == rows, "nothing the crash left is removed"
        assert ledger[batch]["rows_written"] + ledger[batch]["rows_quarantined"] == rows
        assert ledger[batch]["lines"] == rows and ledger[batch]["checksum"] is None
    for batch in set(now) - set(crashed):
        assert ledger[batch]["lines"] == now[batch], "a file written whole"
    assert bronze.find_lost(spark, settings).balanced

    # The removed file's batch short of rows: its ledger row is lowered to what is left;
    # the rows restored, it records them again.
    [gone] = [b for b in crashed if b.startswith(f"order_placed-{days[1]:%Y%m%d}")]
    before = tables.current_version(spark, orders)
    first_lines = (F.col("_batch_id") == gone) & (F.col("_line_no") <= 3)
    deleted = tables.read(spark, orders).filter(first_lines).count()
    DeltaTable.forName(spark, orders).delete(first_lines)
    assert deleted and not bronze.find_lost(spark, settings).batches
    assert tables.read(spark, ledger_name).filter(F.col("batch_id") == gone).first()["rows_written"] == (
        ledger[gone]["rows_written"] - deleted)
    DeltaTable.forName(spark, orders).restoreToVersion(before)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lakeward.bronze"):
        bronze.find_lost(spark, settings)
        assert bronze.find_lost(spark, settings).balanced
    assert caplog.text.count("now records") == 1, "said once, not on every run"
    assert tables.read(spark, ledger_name).filter(F.col("batch_id") == gone).first()["rows_written"] == (
        ledger[gone]["rows_written"])


def test_landing_files_under_a_root_with_a_plus_a_space_or_an_accent_or_behind_a_link(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    # Spark reports the path of a file it read as a URI, which spells these otherwise than Python.
    settings = isolated(base_settings, tmp_path / "odd+root é 1")
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=5, users=20, days=1, start=day, faults=FAULTS)
    # A landing file that is a link to a file of another name is read under its own name.
    path = landing_file(settings.landing_dir, "order_placed", day)
    elsewhere = tmp_path / "kept" / "orders.jsonl"
    elsewhere.parent.mkdir()
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    bronze.ensure_tables(spark, settings)
    result = bronze.ingest(spark, settings, "order_placed", [day])
    lines = len(elsewhere.read_bytes().splitlines())
    assert result.rows_written + result.rows_quarantined == lines and result.rows_written > 0
    # A folder named like a day's file is not one.
    folder = landing_file(settings.landing_dir, "rating_submitted", day)
    folder.unlink()
    folder.mkdir()
    assert bronze.landing_files(settings, "rating_submitted", [day]) == []


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

    [(rows_in, quarantined, duplicates, written)] = silver_ledger(spark, settings, "users", days[0])
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
    [(rows_in, quarantined, duplicates, written)] = silver_ledger(spark, settings, "order_placed", days[0])
    assert duplicates >= in_both and rows_in == quarantined + duplicates + written


def test_an_event_sent_on_two_days_arrives_on_the_first_whatever_day_runs_first(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Day 2 runs before day 1. An event whose line is in both files is held from day 2's
    batch; day 1's run moves its arrival back to day 1, as a run in order would have it
    (gold counts an event from its arrival), and counts its own copy as a duplicate. A day 1
    copy with another timestamp changes nothing: the held values with day 1's arrival would
    be a row neither order gives, one that arrived before it happened. So with the users
    snapshots: a record in both files arrives on day 1."""
    settings, days = _three_days_in_bronze(spark, base_settings, tmp_path, altered="2026-03-02T20:00:00Z")
    [altered] = [
        r["event_id"] for r in tables.read(spark, settings.table("bronze_order_placed"))
        .groupBy("event_id").agg(F.countDistinct("event_ts").alias("forms")).filter("forms > 1").collect()
    ]
    pipeline.run_silver(spark, settings, DateSelection(days[1]))
    # Gold follows silver: a date silver has not reached is a warning, not a filter.
    with caplog.at_level(logging.WARNING, logger="lakeward.pipeline"):
        assert pipeline.run_gold(spark, settings, DateSelection(days[2])).mode == "full"
    assert (f"silver holds arrival days up to {days[1]}, so gold's features do not reach {days[2]}"
            in caplog.text)
    caplog.clear()
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
        [(rows_in, quarantined, duplicates, wrote)] = silver_ledger(spark, settings, source, days[0])
        assert rows_in == quarantined + duplicates + wrote and duplicates >= moved.count()
    # Each day's users file is a snapshot: a record unchanged since day 1 is in both
    # files, and takes day 1's arrival too; a record changed on day 2 keeps day 2's.
    first_sent = {
        r["event_id"]: r["first"] for r in tables.read(spark, settings.table("bronze_users"))
        .groupBy("event_id").agg(F.min("_arrival_date").alias("first")).collect()
    }
    users = tables.read(spark, settings.table("silver_users")).collect()
    assert {r["event_id"]: r["_arrival_date"] for r in users} == {r["event_id"]: first_sent[r["event_id"]]
                                                                  for r in users}
    assert any(r["_arrival_date"] == days[0] and f"{days[1]:%Y%m%d}" in r["_batch_id"] for r in users)
    [(rows_in, quarantined, duplicates, wrote)] = silver_ledger(spark, settings, "users", days[0])
    assert rows_in == quarantined + duplicates + wrote and wrote == 0, "day 2 had every record of day 1"
    # The moved arrivals are updates in silver's change feed: gold applies them as an
    # increment, which equals a full recompute.
    with caplog.at_level(logging.WARNING, logger="lakeward.pipeline"):
        assert pipeline.run_gold(spark, settings, DateSelection(days[2])).mode == "incremental"
    assert "do not reach" not in caplog.text
    gold_equals_full(spark, settings)


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


def test_copies_of_a_batch_another_bronze_run_recorded_are_taken_once_and_then_removed(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two bronze runs that overlap on a cluster can both append a file; the one whose ledger
    row lost deletes its copy afterwards, unless it dies first. A silver run that reads bronze
    before that takes each line once, counts it once, and keeps the copy of the run the
    ledger names; the next bronze run removes the copies of a run that died."""
    settings = isolated(base_settings, tmp_path)
    day = date(2026, 3, 1)
    generate(settings.landing_dir, seed=5, users=30, days=1, start=day, faults=FAULTS)
    pipeline.ensure_tables(spark, settings)
    pipeline.run_bronze(spark, settings, DateSelection(day))
    names = [*(settings.table(f"bronze_{s}") for s in SOURCES), settings.table("bronze_quarantine")]
    for name in names:
        # The losing run's copy, stamped a second earlier: the earlier copy is not the one to keep.
        tables.append(tables.read(spark, name).withColumn(
            "_ingested_at", F.col("_ingested_at") - F.expr("INTERVAL 1 SECOND")), name)
    with caplog.at_level(logging.WARNING, logger="lakeward.silver"):
        pipeline.run_silver(spark, settings, DateSelection(day))

    bronze_ledger = tables.read(spark, settings.table("ops_ingestion_batches"))
    ingested = {r["batch_id"]: r for r in bronze_ledger.collect()}
    ledger = tables.read(spark, settings.table("ops_silver_batches")).collect()
    assert {r["batch_id"] for r in ledger} == set(ingested)
    quarantine = tables.read(spark, settings.table("silver_quarantine"))
    assert quarantine.groupBy("source", "_batch_id", "_line_no").count().filter("count > 1").count() == 0
    refused = {r["_batch_id"]: r["count"] for r in quarantine.groupBy("_batch_id").count().collect()}
    for r in ledger:
        assert r["rows_in"] == ingested[r["batch_id"]]["rows_written"]
        assert r["rows_in"] == r["rows_quarantined"] + r["rows_duplicate"] + r["rows_written"]
        assert r["rows_quarantined"] == refused.get(r["batch_id"], 0)
    assert sum(r["rows_quarantined"] for r in ledger) > 0
    for source, spec in silver.SOURCES.items():
        held = tables.read(spark, settings.table(spec.table))
        if source == "users":
            continue  # it keeps no _ingested_at
        stamps = {tuple(r) for r in held.select("_batch_id", "_ingested_at").collect()}
        assert stamps == {(b, ingested[b]["ingested_at"]) for b, _ in stamps}
        written = sum(r["rows_written"] for r in ledger if r["source"] == source)
        assert held.count() == written > 0 or source == "rating_submitted"  # none on the first day
    assert "bronze holds 1 batch(es) more than once" in caplog.text

    with caplog.at_level(logging.WARNING, logger="lakeward.bronze"):
        pipeline.run_bronze(spark, settings, DateSelection(day))
    assert "were copies of lines held by another run" in caplog.text
    rows = {name: tables.read(spark, name).select("_batch_id", "_ingested_at").collect() for name in names}
    assert {(r[0], r[1]) for held in rows.values() for r in held} == {
        (b, r["ingested_at"]) for b, r in ingested.items() if r["rows_written"] or r["rows_quarantined"]
    }
    assert len(rows[names[-1]]) == sum(r["rows_quarantined"] for r in ingested.values())
    assert sum(len(rows[n]) for n in names[:-1]) == sum(r["rows_written"] for r in ingested.values())
    pipeline.run_silver(spark, settings, DateSelection(day))
    assert tables.read(spark, settings.table("ops_silver_batches")).count() == len(ledger)
    assert tables.read(spark, settings.table("silver_quarantine")).count() == sum(refused.values())

    # Two runs that both died before recording a file, which is gone since: the ledger
    # records each line once, and the later copy goes.
    [gone] = [b for b, r in ingested.items() if r["source"] == "delivery_completed"]
    DeltaTable.forName(spark, settings.table("ops_ingestion_batches")).delete(F.col("batch_id") == gone)
    deliveries = settings.table("bronze_delivery_completed")
    tables.append(tables.read(spark, deliveries).withColumn(
        "_ingested_at", F.col("_ingested_at") + F.expr("INTERVAL 1 SECOND")), deliveries)
    landing_file(settings.landing_dir, "delivery_completed", day).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lakeward.bronze"):
        pipeline.run_bronze(spark, settings, DateSelection(day))
    assert "were copies of lines held by another run" in caplog.text
    assert "cannot be restored" not in caplog.text  # no line counted twice, so none missing after
    [again] = tables.read(spark, settings.table("ops_ingestion_batches")).filter(
        F.col("batch_id") == gone).collect()
    assert (again["rows_written"], again["ingested_at"]) == (
        ingested[gone]["rows_written"], ingested[gone]["ingested_at"])
    held = tables.read(spark, deliveries).select("_ingested_at").collect()
    assert len(held) == again["rows_written"] and {r[0] for r in held} == {again["ingested_at"]}


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
    orders = count_rows(spark, settings, "silver_orders")
    assert orders > 0  # the data write happened
    assert count_rows(spark, settings, "ops_silver_batches") == 0
    assert silver.pending_dates(spark, settings)["order_placed"] == [day]

    pipeline.run_silver(spark, settings, DateSelection())
    assert count_rows(spark, settings, "silver_orders") == orders
    results = tables.read(spark, settings.table("ops_quality_results")).collect()
    suites = {"silver_orders", "silver_deliveries", "silver_ratings", "silver_users"}
    assert {r["suite"] for r in results} == suites
    gated = {r["element_count"] for r in results if r["suite"] == "silver_orders"}
    assert gated == {orders}, "the retry gates the rows the first run wrote"
    assert silver.pending_dates(spark, settings) == {source: [] for source in SOURCES}
    for source in SOURCES:
        [(_, _, duplicates, written)] = silver_ledger(spark, settings, source, day)
        assert (duplicates, written) == (0, count_rows(spark, settings, silver.SOURCES[source].table)), source
