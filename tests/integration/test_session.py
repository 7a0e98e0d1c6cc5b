"""The session lakeward builds runs with the JVM options its settings name."""

from pyspark.sql import SparkSession

from lakeward.config import Settings


def test_driver_jvm_runs_with_the_configured_options(spark: SparkSession, base_settings: Settings) -> None:
    management = spark.sparkContext._jvm.java.lang.management.ManagementFactory  # type: ignore[union-attr]
    arguments = list(management.getRuntimeMXBean().getInputArguments())
    assert base_settings.spark.driver_java_options
    for option in base_settings.spark.driver_java_options:
        assert option in arguments
    assert f"-Dderby.system.home={base_settings.metastore_dir}" in arguments
