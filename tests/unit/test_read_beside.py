"""What ``lakeward sql`` lets through while another process holds the data root (parsing only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakeward.read_beside import NotAQueryError, check_query, table_location


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1",
        "SELECT * FROM silver.orders VERSION AS OF 3 WHERE user_key IN (SELECT user_key FROM silver.users)",
        "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
        "VALUES (1), (2)",
        "(SELECT 1) UNION (SELECT 2) ORDER BY 1",
        "DESCRIBE HISTORY silver.orders",
    ],
)
def test_queries_pass(spark: SparkSession, query: str) -> None:
    check_query(spark, query)


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("DROP TABLE silver.orders", "DropTable"),
        ("CREATE TABLE default.t (x INT) USING delta", "CreateTable"),
        ("INSERT INTO silver.orders SELECT * FROM silver.orders", "InsertIntoStatement"),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "InsertIntoStatement"),
        ("FROM t INSERT INTO u SELECT *", "InsertIntoStatement"),
        ("INSERT OVERWRITE DIRECTORY '/tmp/out' SELECT 1", "InsertIntoDir"),
        ("DELETE FROM silver.orders WHERE amount > 0", "DeleteFromTable"),
        ("UPDATE silver.orders SET amount = 0", "UpdateTable"),
        ("MERGE INTO t USING u ON t.x = u.x WHEN MATCHED THEN DELETE", "MergeIntoTable"),
        ("RESTORE TABLE silver.orders TO VERSION AS OF 1", "RestoreTableStatement"),
        ("VACUUM silver.orders", "VacuumTableCommand"),
        ("OPTIMIZE silver.orders", "OptimizeTableCommand"),
        ("TRUNCATE TABLE silver.orders", "TruncateTable"),
        ("SET spark.sql.shuffle.partitions = 1", "SetCommand"),
        ("CACHE TABLE silver.orders", "CacheTable"),
        ("CREATE TEMPORARY VIEW v AS SELECT 1", "CreateViewCommand"),
    ],
)
def test_other_statements_are_refused(spark: SparkSession, query: str, kind: str) -> None:
    with pytest.raises(NotAQueryError, match=f"only queries can run .*, not {kind};"):
        check_query(spark, query)


def test_a_table_is_found_only_where_the_warehouse_keeps_delta_tables(tmp_path: Path) -> None:
    for directory in ("silver.db/orders", "plain", "silver.db/not_delta"):
        (tmp_path / directory).mkdir(parents=True)
    for directory in ("silver.db/orders", "plain"):
        (tmp_path / directory / "_delta_log").mkdir()
    assert table_location(tmp_path, "silver", "orders") == tmp_path / "silver.db" / "orders"
    assert table_location(tmp_path, "default", "plain") == tmp_path / "plain"
    assert table_location(tmp_path, "silver", "not_delta") is None
    assert table_location(tmp_path, "silver", "missing") is None
    assert table_location(tmp_path, "silver.db", "orders") is None  # not an identifier
    assert table_location(tmp_path, "..", "orders") is None
