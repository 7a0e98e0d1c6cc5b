"""lakeward on a Spark standalone cluster: a master and a worker in their own JVMs on this machine.

DESIGN.md makes a standalone cluster the test of cluster runs; one job also
runs on a ``local[2]`` master, as the foundation issue submits it. The jobs run
as users run them (``spark-submit`` of ``jobs/*.py``, and ``lakeward`` with
``spark.mode: cluster``), so their executors are separate JVMs that get the
Delta jars and the project's Python from the driver, not from the test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import NamedTuple

import pyspark
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakeward.config import Settings, default_conf_dir
from lakeward.session import delta_coordinates
from lakeward.sources.bitebridge import SOURCES, generate
from tests.cli_process import lakeward

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SPARK_BIN = Path(pyspark.__file__).parent / "bin"
DAY = date(2026, 3, 2)
# Each daemon is two JVMs (the launcher, then the master or worker): minutes on a loaded machine.
START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"standalone cluster did not log {text!r}:\n{log.read_text(errors='replace')[-3000:]}")


class Cluster:
    """A standalone master and one two-core worker, stopped when the module's tests end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"spark://127.0.0.1:{_free_port()}"
        self.work_dir = root / "work"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}
        port = self.url.rsplit(":", 1)[1]
        master_log = self.root / "master.log"
        master = self._spawn(
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", port,
             "--webui-port", str(_free_port())], master_log, env)
        _wait_for(master_log, "I have been elected leader", master)
        worker_log = self.root / "worker.log"
        worker = self._spawn(
            ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "2",
             "--memory", "2g", "--webui-port", str(_free_port()), "--work-dir", str(self.work_dir),
             self.url], worker_log, env)
        _wait_for(worker_log, "Successfully registered with master", worker)

    def _spawn(self, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(SPARK_BIN / "spark-class"), *args], stdout=sink, stderr=subprocess.STDOUT, env=env
            )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def applications(self) -> list[str]:
        """Applications whose executors ran on the worker."""
        return sorted(path.name for path in self.work_dir.glob("app-*"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    standalone = Cluster(tmp_path_factory.mktemp("standalone"))
    try:
        standalone.start()
        yield standalone
    finally:
        standalone.stop()


def _environment(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LAKEWARD_HOME=str(home), PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", **extra)
    return env


def _landing(home: Path) -> int:
    """Two arrival days of BiteBridge data, faults included; returns the lines of ``DAY``."""
    generate(home / "landing", seed=3, users=40, days=2, start=date(2026, 3, 1))
    lines = 0
    for path in (home / "landing").glob(f"*/{DAY.isoformat()}.jsonl"):
        with path.open("rb") as landing_file:
            lines += sum(1 for _ in landing_file)
    return lines


def _table(spark: SparkSession, warehouse: Path, settings: Settings, logical: str) -> DataFrame:
    """A table written by another process's catalog, read from its files."""
    schema, table = settings.table(logical).split(".")
    return spark.read.format("delta").load(str(warehouse / f"{schema}.db" / table))


def _rows(spark: SparkSession, warehouse: Path, settings: Settings, logical: str) -> int:
    return _table(spark, warehouse, settings, logical).count()


def _bronze_and_quarantine(spark: SparkSession, warehouse: Path, settings: Settings) -> int:
    tables = [f"bronze_{source}" for source in SOURCES] + ["bronze_quarantine"]
    return sum(_rows(spark, warehouse, settings, logical) for logical in tables)


class Submitted(NamedTuple):
    """The submitted job's working directory, data root, landing lines of ``DAY`` and result."""

    work: Path
    home: Path
    lines: int
    result: subprocess.CompletedProcess[str]
    new_applications: int


@pytest.fixture(scope="module")
def submitted(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Submitted:
    """One arrival day through ``jobs/all.py``, submitted to the cluster as a user submits it."""
    work = tmp_path_factory.mktemp("submitted")
    home = work / "home"
    lines = _landing(home)
    before = cluster.applications()
    result = subprocess.run(
        [str(SPARK_BIN / "spark-submit"), "--master", cluster.url, "--packages", delta_coordinates(),
         "--conf", "spark.executor.memory=1g", str(REPO / "jobs" / "all.py"), "--date", DAY.isoformat()],
        env=_environment(home), capture_output=True, text=True, timeout=900, cwd=work,
    )
    return Submitted(work, home, lines, result, len(cluster.applications()) - len(before))


def test_spark_submit_runs_a_day_on_the_cluster(
    submitted: Submitted, spark: SparkSession, base_settings: Settings
) -> None:
    assert submitted.result.returncode == 0, submitted.result.stderr[-4000:]
    assert submitted.new_applications == 1, "the job's executors did not run on the worker"
    warehouse = submitted.home / "warehouse"
    assert _bronze_and_quarantine(spark, warehouse, base_settings) == submitted.lines
    ledger = _table(spark, warehouse, base_settings, "ops_silver_batches")
    ledger = ledger.filter(F.col("source") == "order_placed")
    rows_in, written = ledger.agg(F.sum("rows_in"), F.sum("rows_written")).first()
    assert rows_in == _rows(spark, warehouse, base_settings, "bronze_order_placed")
    assert written == _rows(spark, warehouse, base_settings, "silver_orders") > 0
    # Every user with an event known by DAY has DAY's feature row, and no one else.
    known = [
        _table(spark, warehouse, base_settings, logical).filter(F.col("event_date") <= DAY).select("user_key")
        for logical in ("silver_orders", "silver_deliveries", "silver_ratings")
    ]
    users = known[0].union(known[1]).union(known[2]).distinct().count()
    features = _table(spark, warehouse, base_settings, "gold_user_features")
    assert features.filter(F.col("feature_date") == DAY).count() == features.count() == users > 0
    assert not (submitted.work / "derby.log").exists()


def test_spark_submit_runs_bronze_on_a_local_master(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """``jobs/bronze.py`` as the foundation issue runs it: ``--master local[2]``, Delta by ``--packages``."""
    home = tmp_path / "home"
    lines = _landing(home)
    result = subprocess.run(
        [str(SPARK_BIN / "spark-submit"), "--master", "local[2]", "--packages", delta_coordinates(),
         str(REPO / "jobs" / "bronze.py"), "--date", DAY.isoformat()],
        env=_environment(home), capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert _bronze_and_quarantine(spark, home / "warehouse", base_settings) == lines
    assert not (tmp_path / "derby.log").exists()


def test_cluster_mode_takes_the_master_from_config(
    cluster: Cluster, submitted: Submitted, spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    assert submitted.result.returncode == 0
    home = submitted.home
    conf = tmp_path / "conf"
    shutil.copytree(default_conf_dir(), conf)
    # A cluster's catalog comes from its spark-defaults.conf; this cluster has
    # none, so the overlay points at the metastore the submitted job wrote.
    metastore = f"jdbc:derby:;databaseName={home / 'metastore' / 'metastore_db'}"
    (conf / "dev.yml").write_text(
        "spark:\n"
        "  mode: cluster\n"
        f"  master: {cluster.url}\n"
        "  conf:\n"
        "    spark.sql.catalogImplementation: hive\n"
        f"    spark.hadoop.javax.jdo.option.ConnectionURL: '{metastore}'\n"
        f"    spark.sql.warehouse.dir: {home / 'warehouse'}\n"
        "    spark.executor.memory: 1g\n"
    )
    before = cluster.applications()

    query = lakeward(
        _environment(home, LAKEWARD_CONF_DIR=str(conf), LAKEWARD_PII_KEY="cluster-test-key"),
        "sql", "--env", "dev", "--format", "json", "SELECT count(*) AS n FROM silver.orders",
        cwd=tmp_path, timeout=600,
    )

    assert query.returncode == 0, query.stderr[-4000:]
    assert len(cluster.applications()) == len(before) + 1
    counted = json.loads(query.stdout)["n"]
    assert counted == _rows(spark, home / "warehouse", base_settings, "silver_orders")


def test_cluster_mode_refuses_a_local_master(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(default_conf_dir(), conf)

    run = lakeward(
        _environment(tmp_path / "home", LAKEWARD_CONF_DIR=str(conf), LAKEWARD_PII_KEY="cluster-test-key"),
        "run", "bronze", "--env", "dev", "--date", DAY.isoformat(), cwd=tmp_path, timeout=300,
    )

    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert "spark.mode is cluster but spark.master is 'local[*]'" in run.stderr
    assert f"in {conf.resolve() / 'dev.yml'}," in run.stderr, "the conf directory in use, not ./conf"


def test_databricks_mode_off_databricks_is_refused_before_spark(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(default_conf_dir(), conf)
    local = conf / "local.yml"
    local.write_text(local.read_text().replace("spark:\n", "spark:\n  mode: databricks\n", 1))
    env = _environment(tmp_path / "home", LAKEWARD_CONF_DIR=str(conf))
    env.pop("DATABRICKS_RUNTIME_VERSION", None)

    query = lakeward(env, "sql", "SELECT 1", cwd=tmp_path, timeout=300)

    assert query.returncode == 2
    assert query.stderr.strip().count("\n") == 0
    assert "spark.mode is databricks, but this is not a Databricks runtime" in query.stderr
    assert f"in {local.resolve()}," in query.stderr
    # A bare local session would have put its warehouse here.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]
