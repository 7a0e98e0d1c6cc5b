"""What table specs tell Delta: which columns get statistics."""

from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from lakeward import bronze, gold, silver, tables
from lakeward.config import load_settings
from lakeward.sources.bitebridge import PERSONAL_FIELDS, SOURCES

STATS = "delta.dataSkippingStatsColumns"
SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in ("user_id", "email", "day", "n")])


def test_personal_columns_alone_keep_stats_on_every_other_column() -> None:
    spec = tables.TableSpec("t", SCHEMA, personal_columns=("user_id", "email"))
    assert spec.delta_properties()[STATS] == "day,n"


def test_named_stats_columns_replace_the_default() -> None:
    spec = tables.TableSpec("t", SCHEMA, personal_columns=("email",), stats_columns=("day",))
    assert spec.delta_properties()[STATS] == "day"
    assert STATS not in tables.TableSpec("t", SCHEMA).delta_properties()


@pytest.mark.parametrize(
    ("stats", "partition"), [(("email",), ()), (("nope",), ()), (("day",), ("day",))]
)
def test_stats_on_personal_unknown_or_partition_columns_are_refused(
    stats: tuple[str, ...], partition: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="stats_columns"):
        tables.TableSpec("t", SCHEMA, personal_columns=("email",), partition_columns=partition,
                         stats_columns=stats)


def test_pipeline_tables_keep_stats_only_on_what_they_are_filtered_by() -> None:
    settings = load_settings("local")
    for source in SOURCES:
        bronze_stats = bronze.bronze_spec(settings, source).delta_properties()[STATS].split(",")
        assert "_batch_id" in bronze_stats and "_arrival_date" in bronze_stats
        assert not set(bronze_stats) & set(PERSONAL_FIELDS[source])
        assert "user_key" in silver.silver_spec(settings, source).delta_properties()[STATS]
    features = gold.user_features_spec(settings).delta_properties()[STATS]
    assert features == "user_key,feature_date,feature_ts"


def test_only_the_silver_tables_gold_reads_changes_of_keep_a_change_data_feed() -> None:
    settings = load_settings("local")
    feeds = {
        source: silver.silver_spec(settings, source).delta_properties().get("delta.enableChangeDataFeed")
        for source in SOURCES
    }
    assert feeds == {"order_placed": "true", "delivery_completed": "true", "rating_submitted": "true",
                     "users": None}
    # The courier's id is personal data, kept only in bronze.
    assert "courier_id" in bronze.bronze_spec(settings, "delivery_completed").personal_columns
    assert "courier_key" in silver.silver_spec(settings, "delivery_completed").schema.fieldNames()


def test_a_table_name_is_quoted_for_sql_only_when_each_part_is_a_plain_identifier() -> None:
    assert tables.quoted_name("silver.orders") == "`silver`.`orders`"
    assert tables.quoted_name("main.silver.orders") == "`main`.`silver`.`orders`"
    for name in ("silver.orders; DROP TABLE x", "silver.`orders`", "silver.or'ders", "silver..orders", ""):
        with pytest.raises(ValueError, match="not a valid table name"):
            tables.quoted_name(name)


def test_listing_finds_the_files_of_the_directories_that_are_there(
    spark: SparkSession, tmp_path: Path
) -> None:
    """How a table's data files on a remote store are found gone (VACUUM): a directory that is
    gone holds none of them; a failure that tells nothing about the files is raised."""
    kept, emptied = tmp_path / "date=2026-01-01", tmp_path / "date=2026-01-02"
    for directory, names in ((kept, ("a.parquet", "b.parquet")), (emptied, ("c.parquet",))):
        directory.mkdir()
        for name in names:
            (directory / name).write_bytes(b"x")
    # As Hadoop spells paths (Path.as_uri() would write "=" as %3D).
    both = [f"file://{kept}", f"file://{emptied}"]
    assert tables.listed_names(spark, both) == {"a.parquet", "b.parquet", "c.parquet"}
    (emptied / "c.parquet").unlink()
    emptied.rmdir()
    assert tables.listed_names(spark, both) == {"a.parquet", "b.parquet"}
    assert tables.listed_names(spark, both[1:]) == set()
    with pytest.raises(Exception, match="nosuchstore"):
        tables.listed_names(spark, [both[0], "nosuchstore://bucket/table"])
