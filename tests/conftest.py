"""One SparkSession per test process, built by lakeward.session on a temporary data root.

Tests that write get their own uuid-named schema (``fresh_settings``) so no
test depends on another test's tables.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakeward.config import Settings, load_settings
from lakeward.error_text import silence_pyspark_error_logs

# pyspark logs every captured JVM error as a long JSON record; tests assert on the errors.
silence_pyspark_error_logs()

# Tests write times as naive datetimes, which PySpark takes, and gives back, in the process's
# time zone: pinned so the suite passes on a machine set to any zone. Tests of behaviour
# under another zone set TZ themselves (tests/unit/test_labels_splits.py, the CLI tests).
os.environ["TZ"] = "UTC"
time.tzset()

# MLflow exports the store a test points it at, and lakeward warns of a store named there
# that it does not use: none may reach a later test or the processes tests start.
_MLFLOW_STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
for _variable in _MLFLOW_STORE_VARIABLES:
    os.environ.pop(_variable, None)


@pytest.fixture(autouse=True)
def _no_mlflow_store_left_in_the_environment() -> Iterator[None]:
    yield
    for variable in _MLFLOW_STORE_VARIABLES:
        os.environ.pop(variable, None)


# A fixed test key so pseudonymized values are reproducible inside the run.
os.environ.setdefault("LAKEWARD_PII_KEY", "test-key-0123456789abcdef-not-a-secret")


def pytest_report_header() -> str:
    """How fast this machine runs plain Python today, at the top of every run's log.

    The same tests have taken 16 and 57 minutes on machines of the same size
    (docs/BENCHMARKS.md, "Test suite"); this number tells a slower machine from
    slower code when two logs are compared.
    """
    started = time.perf_counter()
    total = 0
    for i in range(5_000_000):
        total += i
    return f"machine speed: 5M Python additions in {time.perf_counter() - started:.2f} s"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lakeward-home")


@pytest.fixture(scope="session")
def base_settings(data_root: Path) -> Settings:
    settings = load_settings("local", data_root=data_root)
    conf = dict(settings.spark.conf)
    # The suite builds about a thousand small Delta tables in one JVM. Delta keeps the log and
    # snapshot of every table it touched (up to 10000, each holding plans and a cached state)
    # and Spark the plans of the last 1000 queries; at 2g the heap was full 13 minutes into a
    # 20-minute run, and from then on over 40% of the time went to full GCs (docs/BENCHMARKS.md,
    # "Test suite").
    # Tests rarely go back to the tables of earlier tests, and nothing reads the query history.
    conf.update({
        "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", "spark.driver.memory": "2g",
        "spark.databricks.delta.delta.log.cacheSize": "200",
        "spark.sql.ui.retainedExecutions": "100", "spark.ui.retainedJobs": "100",
        "spark.ui.retainedStages": "100", "spark.ui.retainedTasks": "2000",
    })
    spark_settings = settings.spark.model_copy(update={"master": "local[2]", "conf": conf})
    return settings.model_copy(update={"spark": spark_settings})


@pytest.fixture(scope="session")
def spark(base_settings: Settings) -> Iterator[SparkSession]:
    from lakeward.session import get_spark

    session = get_spark(base_settings)
    yield session
    session.stop()


def isolated(settings: Settings, root: Path) -> Settings:
    """Settings whose tables live in schemas of their own and whose data root is ``root``."""
    return settings.with_schema_suffix(uuid.uuid4().hex[:8]).model_copy(update={"data_root": root})


@pytest.fixture()
def fresh_settings(base_settings: Settings, tmp_path: Path) -> Settings:
    return isolated(base_settings, tmp_path)
