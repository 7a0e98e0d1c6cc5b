"""The session lakeward builds runs with the JVM options its settings name."""

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakeward.config import ConfigError, Settings, load_settings
from lakeward.session import _check_catalog_home


def test_driver_jvm_runs_with_the_configured_options(spark: SparkSession, base_settings: Settings) -> None:
    management = spark.sparkContext._jvm.java.lang.management.ManagementFactory  # type: ignore[union-attr]
    arguments = list(management.getRuntimeMXBean().getInputArguments())
    assert base_settings.spark.driver_java_options
    for option in base_settings.spark.driver_java_options:
        assert option in arguments
    assert f"-Dderby.system.home={base_settings.metastore_dir}" in arguments


def test_the_catalog_must_keep_its_tables_under_this_data_root(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    link = tmp_path / "link to the root"
    link.symlink_to(base_settings.data_root)
    _check_catalog_home(spark, load_settings("local", data_root=link))  # the same directory

    elsewhere = load_settings("local", data_root=tmp_path / "copy")
    with pytest.raises(ConfigError, match="this data root was copied or moved"):
        _check_catalog_home(spark, elsewhere)
