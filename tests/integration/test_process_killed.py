"""A ``lakeward`` process killed outright, JVM and all, leaves nothing the next run gets wrong.

The crash tests of ``test_pipeline_retries.py`` stop a run in-process at chosen
points; here the operating system ends it (``kill -9`` of its process group),
as an out-of-memory killer or a lost machine does: no handler, no JVM shutdown,
the catalog left as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import date
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from lakeward import pipeline, tables
from lakeward.config import Settings, load_settings
from lakeward.pipeline import DateSelection
from lakeward.sources.bitebridge import generate
from tests.cli_process import LAKEWARD, lakeward
from tests.conftest import isolated
from tests.pipeline_checks import FAULTS

pytestmark = pytest.mark.integration

# The tables whose rows a run produces, with the ledgers that say which input they hold.
COMPARED = [
    "bronze_order_placed", "bronze_delivery_completed", "bronze_rating_submitted", "bronze_users",
    "bronze_quarantine", "silver_orders", "silver_deliveries", "silver_ratings", "silver_users",
    "silver_quarantine", "gold_user_daily", "gold_user_features", "ops_ingestion_batches",
    "ops_silver_batches",
]
# When a run wrote a row, which differs between two runs of the same input.
RUN_TIMES = ("_ingested_at", "ingested_at", "_quarantined_at", "processed_at")
WAIT_S = 900


def _land(settings: Settings) -> None:
    generate(settings.landing_dir, seed=5, users=30, days=3, start=date(2026, 2, 1), faults=FAULTS)


def _without_run_times(frame: DataFrame) -> DataFrame:
    return frame.drop(*RUN_TIMES)


def _kill_group_once(process: subprocess.Popen[bytes], written: Path) -> bool:
    """Kill ``process`` and its JVM as soon as ``written`` exists; whether it did before the run ended."""
    deadline = time.monotonic() + WAIT_S
    while not written.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    seen = written.exists()
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return seen


def test_a_run_killed_between_its_silver_writes_and_their_ledger_is_completed_by_the_next(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    reference = isolated(base_settings, tmp_path / "reference")
    _land(reference)
    pipeline.run(spark, reference, "all", DateSelection())

    # The kill must land between two commits a second or more apart; a loaded machine may
    # miss that window, and then the run is killed on a fresh data root once more.
    for attempt in range(2):
        home = tmp_path / f"killed-{attempt}"
        killed = load_settings("local", data_root=home)
        _land(killed)
        env = {**os.environ, "LAKEWARD_HOME": str(home), "LAKEWARD_ENV": "local"}
        env.pop("LAKEWARD_SPARK_CONSOLE", None)
        env.pop("LAKEWARD_CONF_DIR", None)
        warehouse = home / "warehouse"
        silver_orders_written = warehouse / "silver.db" / "orders" / "_delta_log" / f"{1:020d}.json"
        silver_ledger_written = warehouse / "ops.db" / "silver_batches" / "_delta_log" / f"{1:020d}.json"
        errors = tmp_path / f"killed-{attempt}.err"
        with errors.open("wb") as err:
            first = subprocess.Popen([*LAKEWARD, "run", "all", "--all-dates"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            assert _kill_group_once(first, silver_orders_written), errors.read_text()
        if not silver_ledger_written.exists():
            break
    else:
        pytest.fail("killed too late twice: silver had recorded its batches")

    again = lakeward(env, "run", "all", "--all-dates", timeout=WAIT_S)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr

    for logical in COMPARED:
        schema, table = killed.table(logical).split(".")
        after_kill = spark.read.format("delta").load(str(warehouse / f"{schema}.db" / table))
        expected = tables.read(spark, reference.table(logical))
        assert_df_equality(_without_run_times(after_kill), _without_run_times(expected),
                           ignore_row_order=True, ignore_nullable=True)
