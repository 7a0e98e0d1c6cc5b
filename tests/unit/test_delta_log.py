"""The driver-side reads of a Delta log answer as DESCRIBE HISTORY and DESCRIBE DETAIL do."""

from __future__ import annotations

import uuid

import pytest
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession

from lakeward import delta_log, tables
from tests.pipeline_checks import drop_table


def _name(spark: SparkSession) -> str:
    tables.ensure_schema(spark, "delta_log_test")
    return f"delta_log_test.t_{uuid.uuid4().hex[:12]}"


def _as_sql_sees_it(spark: SparkSession, name: str) -> None:
    entry = DeltaTable.forName(spark, name).history(1).first()
    detail = DeltaTable.forName(spark, name).detail().first()
    assert entry is not None and detail is not None
    latest, commit = delta_log.snapshot(spark, name), delta_log.last_commit(spark, name)
    assert latest == delta_log.Snapshot(entry["version"], detail["id"], dict(detail["properties"]))
    assert commit == delta_log.Commit(
        entry["version"], entry["userMetadata"], dict(entry["operationMetrics"] or {})
    )
    rows = spark.read.table(name).count()
    assert delta_log.row_count(spark, name) == rows and tables.row_counts(spark, [name]) == {name: rows}
    assert tables.current_version(spark, name) == entry["version"]
    assert tables.table_id(spark, name) == detail["id"]
    assert tables.last_commit(spark, name) == (entry["version"], entry["userMetadata"])
    metrics = entry["operationMetrics"] or {}
    assert tables.rows_last_written(spark, name) == int(metrics.get("numOutputRows", 0))


def test_each_commit_reads_as_history_and_detail_show_it(spark: SparkSession) -> None:
    name = _name(spark)
    rows = spark.createDataFrame([(1, "a"), (2, "b")], "id int, v string")
    (
        rows.write.format("delta").option(tables.USER_METADATA_OPTION, "first write")
        .option("delta.appendOnly", "false").saveAsTable(name)
    )
    _as_sql_sees_it(spark, name)
    rows.write.format("delta").mode("append").saveAsTable(name)
    _as_sql_sees_it(spark, name)
    more = spark.createDataFrame([(2, "c"), (3, "d")], "id int, v string")
    with tables.noted_commits(spark, "a merge"):
        (
            DeltaTable.forName(spark, name).alias("t").merge(more.alias("s"), "t.id = s.id")
            .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
        )
    _as_sql_sees_it(spark, name)
    DeltaTable.forName(spark, name).delete("id = 1")
    _as_sql_sees_it(spark, name)
    assert delta_log.snapshot(spark, name).properties == {"delta.appendOnly": "false"}  # type: ignore[union-attr]


def test_rows_deleted_by_deletion_vectors_are_not_counted(spark: SparkSession) -> None:
    name = _name(spark)
    rows = spark.range(10).selectExpr("id", "id % 2 AS odd").coalesce(1)
    rows.write.format("delta").option("delta.enableDeletionVectors", "true").saveAsTable(name)
    DeltaTable.forName(spark, name).delete("odd = 1")
    metrics = DeltaTable.forName(spark, name).history(1).first()["operationMetrics"]
    assert int(metrics["numDeletionVectorsAdded"]) == 1 and int(metrics["numAddedFiles"]) == 0
    _as_sql_sees_it(spark, name)
    assert delta_log.row_count(spark, name) == 5


def test_a_table_of_more_files_than_the_checksum_lists_is_counted_by_spark(spark: SparkSession) -> None:
    name = _name(spark)
    spark.range(6).repartition(3).write.format("delta").saveAsTable(name)
    key = "spark.databricks.delta.allFilesInCrc.thresholdNumFiles"
    before = spark.conf.get(key)
    spark.conf.set(key, "2")
    try:
        spark.range(6, 9).repartition(3).write.format("delta").mode("append").saveAsTable(name)
    finally:
        spark.conf.set(key, before)
    assert delta_log.row_count(spark, name) is None
    assert tables.row_counts(spark, [name]) == {name: 9}


def test_a_table_dropped_and_made_again_reads_as_the_new_table(spark: SparkSession) -> None:
    name = _name(spark)
    rows = spark.createDataFrame([(1,)], "id int")
    rows.write.format("delta").saveAsTable(name)
    rows.write.format("delta").mode("append").saveAsTable(name)
    before = delta_log.snapshot(spark, name)
    drop_table(spark, name)
    rows.write.format("delta").saveAsTable(name)
    after = delta_log.snapshot(spark, name)
    assert before is not None and after is not None
    assert (after.version, before.version) == (0, 1) and after.table_id != before.table_id
    _as_sql_sees_it(spark, name)


def test_what_is_not_a_delta_table_is_left_to_sql(spark: SparkSession) -> None:
    missing = _name(spark)
    assert delta_log.snapshot(spark, missing) is None and delta_log.last_commit(spark, missing) is None
    with pytest.raises(AnalysisException):
        tables.current_version(spark, missing)
    parquet = _name(spark)
    spark.createDataFrame([(1,)], "id int").write.format("parquet").saveAsTable(parquet)
    assert delta_log.snapshot(spark, parquet) is None and delta_log.last_commit(spark, parquet) is None


def test_commits_after_a_version_tell_which_changed_rows_from_the_log_and_from_history(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _name(spark)
    rows = spark.createDataFrame([(1, "a"), (2, "b")], "id int, v string")
    rows.write.format("delta").saveAsTable(name)
    rows.write.format("delta").mode("append").option(tables.USER_METADATA_OPTION, "mine").saveAsTable(name)
    DeltaTable.forName(spark, name).optimize().executeCompaction()
    DeltaTable.forName(spark, name).upgradeTableProtocol(1, 4)
    DeltaTable.forName(spark, name).delete("id = 1")
    spark.sql(f"ALTER TABLE {tables.quoted_name(name)} ADD COLUMNS (note STRING)")
    # (version, operation, note, changes rows, changes the definition)
    expected = [(1, "WRITE", "mine", True, False), (2, "OPTIMIZE", None, False, False),
                (3, "SET TBLPROPERTIES", None, False, True), (4, "DELETE", None, True, False),
                (5, "ADD COLUMNS", None, False, True)]

    def seen(changes: list[delta_log.Change] | None) -> list[tuple[object, ...]]:
        return [(c.version, c.operation, c.user_metadata, c.changes_rows, c.changes_definition)
                for c in changes or []]

    assert seen(delta_log.commits_after(spark, name, 0)) == expected
    assert delta_log.commits_after(spark, name, 5) == []
    monkeypatch.setattr(delta_log, "commits_after", lambda *_: None)
    assert seen(tables.commits_after(spark, name, 0)) == expected
