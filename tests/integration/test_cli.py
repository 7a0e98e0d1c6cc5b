"""The CLI as a user runs it: new processes, one data root, tables visible by name across them."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward import cli, root_lock
from lakeward.config import Settings, default_conf_dir, load_settings
from lakeward.sql_output import SAME_TEXT_KEYS
from tests.cli_process import LAKEWARD, lakeward

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli home 50%")  # a space and a percent sign in every path
    conf = root / "conf"
    shutil.copytree(default_conf_dir(), conf)
    with (conf / "local.yml").open("a") as handle:
        handle.write('demo:\n  seed: 5\n  users: 30\n  days: 4\n  start: "2026-02-01"\n')
    environment = dict(os.environ)
    environment.pop("LAKEWARD_PII_KEY", None)
    environment.pop("LAKEWARD_SPARK_CONSOLE", None)  # Spark's output goes to logs/spark.log
    environment.update(
        LAKEWARD_HOME=str(root / "home"), LAKEWARD_CONF_DIR=str(conf), LAKEWARD_ENV="local"
    )
    return environment


class Demo(NamedTuple):
    run: subprocess.CompletedProcess[str]
    seconds: tuple[float, float]
    """When it started and ended, in seconds since the epoch."""


@pytest.fixture(scope="module")
def demo_run(env: dict[str, str]) -> Demo:
    # West of UTC: a time written as a naive UTC datetime would be stored hours ahead.
    started = time.time()
    run = lakeward({**env, "TZ": "America/Los_Angeles"}, "demo")
    return Demo(run, (started, time.time()))


@pytest.fixture(scope="module")
def demo(demo_run: Demo) -> subprocess.CompletedProcess[str]:
    return demo_run.run


def test_demo_runs_and_summarizes(demo: subprocess.CompletedProcess[str], env: dict[str, str]) -> None:
    assert demo.returncode == 0, demo.stderr[-3000:]
    out = demo.stdout
    assert "silver.orders" in out and "gold.user_features" in out
    assert "Quarantined rows by reason" in out
    assert "Duplicates dropped in silver" in out
    assert env["LAKEWARD_HOME"] in out
    # The fixture sets LAKEWARD_ENV, which another shell may not: the commands name it.
    assert out.count('lakeward --env local sql "') == 3
    assert "generated a local pseudonymization key" in demo.stderr
    assert (Path(env["LAKEWARD_HOME"]) / "pii.key").exists()
    assert not (Path.cwd() / "metastore_db").exists() and not (Path.cwd() / "derby.log").exists()
    assert _hive_resource_dirs(env) == ["hive_resources"]


# The times each run writes: its ledgers, lineage columns and quality results.
_WRITTEN_TIMES = {
    "bronze.db/order_placed": "_ingested_at",
    "silver.db/orders": "_ingested_at",
    "ops.db/ingestion_batches": "ingested_at",
    "ops.db/silver_batches": "processed_at",
    "ops.db/quality_results": "checked_at",
    "ops.db/gold_runs": "finished_at",
}


def test_times_written_are_utc_whatever_the_process_time_zone(
    demo_run: Demo, env: dict[str, str], spark: SparkSession
) -> None:
    assert demo_run.run.returncode == 0
    started, ended = demo_run.seconds
    warehouse = Path(env["LAKEWARD_HOME"]) / "warehouse"
    for table, column in _WRITTEN_TIMES.items():
        first, last = (
            spark.read.format("delta").load(str(warehouse / table))
            .agg(F.min(F.unix_seconds(column)), F.max(F.unix_seconds(column))).first()
        )
        assert started - 1 <= first <= last <= ended + 1, (table, column, first, last, started, ended)


def _hive_resource_dirs(env: dict[str, str]) -> list[str]:
    """Hive's resource directories under the data root: one, shared by every process."""
    return sorted(p.name for p in (Path(env["LAKEWARD_HOME"]) / "tmp").glob("*resources"))


def test_sql_in_a_new_process_sees_the_demo_tables(demo: subprocess.CompletedProcess[str],
                                                   env: dict[str, str], tmp_path: Path,
                                                   spark: SparkSession) -> None:
    assert demo.returncode == 0
    resolved_before = _resolutions(env)
    assert resolved_before > 0
    # Times print in the session's time zone (UTC), whatever the machine's is.
    result = lakeward({**env, "TZ": "Asia/Tokyo"}, "sql", "--format", "json",
                      "SELECT count(*) AS n, count(DISTINCT user_key) AS users, "
                      "timestamp'2026-01-01 00:00:00' AS ts FROM silver.orders")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    orders = spark.read.format("delta").load(env["LAKEWARD_HOME"] + "/warehouse/silver.db/orders")
    assert rows == [{"n": orders.count(), "users": orders.select("user_key").distinct().count(),
                     "ts": "2026-01-01 00:00:00"}]
    assert rows[0]["n"] > 0
    assert _hive_resource_dirs(env) == ["hive_resources"], "a new process adds no directory"

    # The demo's first suggestion names the data root and conf directory it used:
    # pasted into a shell without them, elsewhere, it reads the same tables.
    suggested = [line.strip() for line in demo.stdout.splitlines() if ' sql "SELECT' in line]
    assert len(suggested) == 3
    assert suggested[0].endswith('lakeward --env local sql "SELECT count(*) FROM silver.orders"')
    shell = {name: value for name, value in env.items() if not name.startswith("LAKEWARD_")}
    shell["PATH"] = f"{Path(sys.executable).parent}:{shell['PATH']}"
    pasted = subprocess.run(["bash", "-c", suggested[0]], env=shell, cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert pasted.returncode == 0, pasted.stderr[-3000:]
    assert re.findall(r"\d+", pasted.stdout) == ["1", str(rows[0]["n"]), "1"]  # count(1), the count, (1 row)
    assert not (tmp_path / ".lakeward").exists()
    # The demo's process resolved the Delta jars; these read the files it noted.
    assert _resolutions(env) == resolved_before

    # In a process of its own, where nothing but lakeward decides what reaches stderr.
    missing = lakeward(env, "sql", "SELECT * FROM silver.nothing_here")
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("lakeward: error:")
    assert "TABLE_OR_VIEW_NOT_FOUND" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def _resolutions(env: dict[str, str]) -> int:
    """How many times Spark's resolver has resolved packages for this data root's processes."""
    spark_log = Path(env["LAKEWARD_HOME"]) / "logs" / "spark.log"
    return spark_log.read_text(errors="replace").count(":: resolution report ::")


def test_a_copied_data_root_is_refused(
    demo: subprocess.CompletedProcess[str], env: dict[str, str], tmp_path: Path
) -> None:
    # Its catalog still names the original's files: writing through it would change them.
    copy = tmp_path / "copy"
    # Not tmp/: an ending Spark process may still be removing its scratch files there.
    shutil.copytree(env["LAKEWARD_HOME"], copy, ignore=shutil.ignore_patterns("tmp"))
    result = lakeward({**env, "LAKEWARD_HOME": str(copy)}, "sql", "SELECT count(*) FROM silver.orders")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"lakeward: error: the catalog in {copy / 'metastore'} keeps its tables under "
        f"{Path(env['LAKEWARD_HOME']) / 'warehouse'}, not under {copy / 'warehouse'}: this data root "
        f"was copied or moved, and its tables would read and write the files under "
        f"{Path(env['LAKEWARD_HOME']) / 'warehouse'}. Use that data root, or an empty one"
    ]


@contextmanager
def _held(env: dict[str, str], home: Path) -> Iterator[int]:
    """Another process holds the data root ``home`` (as a running job does) until the block ends."""
    holds = (
        "import sys\n"
        "from lakeward import root_lock\n"
        "from lakeward.config import load_settings\n"
        "root_lock.hold(load_settings('local', data_root=sys.argv[1]))\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", holds, str(home)], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_second_process_on_a_data_root_stops_before_starting_spark(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Derby, the local catalog, opens in one process at a time; a second one failed
    # only at its first table, with Hive's "Unable to instantiate ...MetaStoreClient".
    home = tmp_path / "home"
    with _held(env, home) as pid:
        result = lakeward({**env, "LAKEWARD_HOME": str(home)}, "training-set")
        busy = (
            f"another process (pid {pid}) is using the data root {home}: its local catalog "
            f"(Derby) serves one process at a time. Wait for that process to finish, or set "
            f"LAKEWARD_HOME to another data root"
        )
        assert (result.returncode, result.stderr.strip().splitlines()) == (1, [f"lakeward: error: {busy}"])
        assert not (home / "logs").exists()  # no JVM was started
        # generate starts no JVM, but it overwrites landing files a run may be reading.
        generated = lakeward({**env, "LAKEWARD_HOME": str(home)}, "generate", "--seed", "1",
                             "--users", "2", "--days", "1")
        assert (generated.returncode, generated.stderr.strip().splitlines()) == (
            1, [f"lakeward: error: {busy}"])
        assert not (home / "landing").exists()
        settings = load_settings("local", data_root=home)
        with pytest.raises(root_lock.DataRootBusy, match=re.escape(busy)):
            root_lock.hold(settings)
    # Released when its holder exits; held twice by one process, it is still one hold.
    root_lock.hold(settings)
    root_lock.hold(settings)


def test_a_spark_session_of_another_program_on_the_catalog_is_named_before_spark_starts(
    tmp_path: Path,
) -> None:
    # Derby holds a POSIX lock on dbex.lck while a JVM has the database open; this
    # process takes the same lock as a Spark session outside lakeward would.
    home = tmp_path / "home"
    database = home / "metastore" / "metastore_db"
    database.mkdir(parents=True)
    holds = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", holds, str(database / "dbex.lck")], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdin is not None and holder.stdout is not None
    settings = load_settings("local", data_root=home)
    try:
        assert holder.stdout.readline() == "held\n"
        outside = rf"another process \(pid {holder.pid}\), not a lakeward command, has the catalog"
        started = time.monotonic()
        with pytest.raises(root_lock.DataRootBusy, match=outside):
            root_lock.hold(settings)
        # Not waited for (that would take DERBY_RELEASE_WAIT): it is no lakeward command's JVM.
        assert time.monotonic() - started < root_lock.DERBY_RELEASE_WAIT / 4
        # The JVM of the command before, which the lock file names, may hold it a moment
        # after that command ended: that one is waited for.
        (home / "metastore" / root_lock.LOCK_NAME).write_text(f"1\n{holder.pid}\n")
        started = time.monotonic()
        threading.Timer(1.0, holder.stdin.close).start()
        root_lock.hold(settings)
        assert 0.9 < time.monotonic() - started < root_lock.DERBY_RELEASE_WAIT
        assert (home / "metastore" / root_lock.LOCK_NAME).read_text() == f"{os.getpid()}\n"
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=60)


def test_sql_reads_the_tables_while_another_process_holds_the_data_root(
    demo: subprocess.CompletedProcess[str], env: dict[str, str]
) -> None:
    """A query started while a job runs reads the tables by path; anything else is refused."""
    assert demo.returncode == 0
    home = Path(env["LAKEWARD_HOME"])
    # A subquery at an old version, so one process covers time travel beside the holder too.
    query = (
        "SELECT count(*) AS n, count(DISTINCT g.user_key) AS users, "
        "(SELECT count(*) FROM bronze.users VERSION AS OF 0) AS users_at_0 FROM silver.orders o "
        "JOIN gold.user_daily g ON g.user_key = o.user_key AND g.event_date = o.event_date "
        "WHERE o.user_key IN (SELECT user_key FROM silver.users)"
    )
    alone = lakeward(env, "sql", "--format", "json", query)
    assert alone.returncode == 0, alone.stderr[-3000:]
    # The other statements the reader refuses are unit tests (tests/unit/test_read_beside.py).
    files = _catalog_and_table_files(home)
    with _held(env, home) as pid:
        beside = lakeward(env, "sql", "--format", "json", query)
        assert beside.returncode == 0, beside.stderr[-3000:]
        assert beside.stdout == alone.stdout
        row = json.loads(beside.stdout)
        assert row["n"] > 0 and row["users_at_0"] == 0
        assert f"another process (pid {pid}) is using the data root" in beside.stderr

        dropped = lakeward(env, "sql", "DROP TABLE silver.orders")
        assert dropped.returncode == 1
        assert dropped.stderr.strip().splitlines()[-1] == (
            "lakeward: error: only queries can run while another process holds the data root, "
            "not DropTable; run the statement once that process has finished"
        )
        missing = lakeward(env, "sql", "SELECT * FROM silver.nothing_here")
        assert missing.returncode == 1 and "TABLE_OR_VIEW_NOT_FOUND" in missing.stderr
    # The reader left the catalog and the tables alone: no file written, changed or removed.
    assert _catalog_and_table_files(home) == files


def _catalog_and_table_files(home: Path) -> dict[Path, int]:
    """Every file of the catalog and the warehouse with its modification time (not the root's lock)."""
    return {path: path.stat().st_mtime_ns for part in ("metastore", "warehouse")
            for path in (home / part).rglob("*") if path.is_file() and not path.name.endswith(".lock")}


def test_the_first_start_writes_a_class_archive_that_later_starts_map(
    env: dict[str, str], tmp_path: Path
) -> None:
    archives, class_log = tmp_path / "archives", tmp_path / "classes.log"
    conf = tmp_path / "conf"
    shutil.copytree(env["LAKEWARD_CONF_DIR"], conf)
    base = (conf / "base.yml").read_text()
    options = 'driver_java_options: ["-XX:+UseParallelGC"'
    assert "class_data_dir: null" in base and options in base
    (conf / "base.yml").write_text(
        base.replace("class_data_dir: null", f"class_data_dir: {archives}")
        .replace(options, f'{options}, "-Xlog:class+load:file={class_log}"')
    )
    own = {**env, "LAKEWARD_CONF_DIR": str(conf), "LAKEWARD_HOME": str(tmp_path / "home")}

    first = lakeward(own, "sql", "SELECT 1 AS one")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "writing the JVM class archive" in first.stderr
    archive = next(archives.glob("*.jsa"))
    assert sorted(path.name for path in archives.iterdir()) == [archive.name, f"{archive.stem}.lock"]

    second = lakeward(own, "sql", "--format", "json", "SELECT 1 AS one")
    assert second.returncode == 0 and second.stdout == '{"one": 1}\n', second.stderr[-3000:]
    assert "class archive" not in second.stderr
    # "top": the archive lakeward wrote, not the JDK's own.
    mapped = "io.delta.sql.DeltaSparkSessionExtension source: shared objects file (top)"
    assert mapped in class_log.read_text()


def test_missing_landing_date_is_one_line(
    demo: subprocess.CompletedProcess[str], env: dict[str, str]
) -> None:
    result = lakeward(env, "run", "bronze", "--date", "2025-01-01")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lakeward: error: no landing files for 2025-01-01")
    assert "Traceback" not in result.stderr
    before = datetime.now(UTC).date()
    ahead = lakeward(env, "run", "all", "--date", "2999-01-01")
    assert ahead.returncode == 1
    # Today as the command saw it: the day it started or, across midnight UTC, the next.
    assert ahead.stderr.strip().splitlines() in [
        ["lakeward: error: 2999-01-01 is after today "
         f"({today}, UTC): its landing files are taken on that day or later, "
         "since nothing can have arrived on it yet"]
        for today in (before, datetime.now(UTC).date())
    ]


def test_a_data_root_without_landing_files_is_refused_before_anything_is_written(
    env: dict[str, str], tmp_path: Path
) -> None:
    home = tmp_path / "typo"
    for stage in ("bronze", "all"):
        result = lakeward({**env, "LAKEWARD_HOME": str(home)}, "run", stage, "--all-dates")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"lakeward: error: no landing files under {home / 'landing'}; run `lakeward generate` first"
        ]
    assert not home.exists()  # no key, no catalog, no lock: Spark never started
    # Files that are there under names no run takes are named.
    (home / "landing" / "orders").mkdir(parents=True)
    (home / "landing" / "orders" / "2026-01-01.jsonl").write_text("{}\n")
    result = lakeward({**env, "LAKEWARD_HOME": str(home)}, "run", "bronze", "--date", "2026-01-01")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"lakeward: error: no landing files for 2026-01-01 under {home / 'landing'}; 1 landing path(s) "
        "not files named <source>/YYYY-MM-DD.jsonl, so not ingested: orders"
    ]


def test_bad_arguments_and_config(env: dict[str, str], tmp_path: Path) -> None:
    bad_date = lakeward(env, "run", "bronze", "--date", "yesterday")
    assert bad_date.returncode == 2 and "expected a date as YYYY-MM-DD" in bad_date.stderr
    fresh = {**env, "LAKEWARD_HOME": str(tmp_path / "fresh")}
    too_late = lakeward(fresh, "generate", "--seed", "1", "--users", "2", "--days", "5",
                        "--start", "9999-12-29")
    assert too_late.returncode == 2 and "gives dates outside years 1 to 9999" in too_late.stderr
    assert not (tmp_path / "fresh" / "landing").exists()

    conf = tmp_path / "conf"
    shutil.copytree(env["LAKEWARD_CONF_DIR"], conf)
    (conf / "local.yml").write_text("pipeline:\n  allowed_lateness_days: soon\n")
    bad_conf = lakeward({**env, "LAKEWARD_CONF_DIR": str(conf)}, "generate", "--seed", "1",
                        "--users", "2", "--days", "1")
    assert bad_conf.returncode == 2
    assert "local.yml: pipeline.allowed_lateness_days" in bad_conf.stderr
    assert "Traceback" not in bad_conf.stderr
    # A training set may not take the name of a table lakeward writes itself.
    taken = lakeward(env, "training-set", "--name", "Predictions")
    assert (taken.returncode, taken.stderr.strip().splitlines()) == (2, [
        "lakeward: error: --name: ml.predictions is one of lakeward's own tables; "
        "choose another training set name"])
    # So may the commands that read or write a named training set, before Spark starts.
    for command, flag in (("train", "--training-set"), ("rebuild-training-set", "--output")):
        extra = ("--run-id", "0" * 32) if command == "rebuild-training-set" else ()
        refused = lakeward(env, command, *extra, flag, "ops_" + "x" * 200)
        assert (refused.returncode, refused.stderr.strip().splitlines()) == (2, [
            f"lakeward: error: {flag}: a training set name has at most 128 characters, got 204"])
    # --debug adds the traceback and keeps the exit code.
    debug = lakeward({**env, "LAKEWARD_CONF_DIR": str(conf)}, "generate", "--seed", "1",
                     "--users", "2", "--days", "1", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("lakeward: error: ")

    prod = lakeward({**env, "LAKEWARD_ENV": "prod"}, "run", "silver", "--all-dates")
    assert prod.returncode == 2 and "LAKEWARD_PII_KEY is not set" in prod.stderr

    # A contract on a column silver does not have stops silver before Spark starts.
    (conf / "local.yml").write_text("privacy:\n  generate_key_if_missing: true\n")
    with (conf / "contracts" / "silver_orders.yml").open("a") as contract:
        contract.write("  - expect_column_values_to_not_be_null: {column: amout}\n")
    no_column = lakeward({**env, "LAKEWARD_CONF_DIR": str(conf)}, "run", "silver")
    assert (no_column.returncode, no_column.stderr.strip().splitlines()) == (2, [
        f"lakeward: error: {conf / 'contracts' / 'silver_orders.yml'}: expectations[6] "
        "expect_column_values_to_not_be_null: column: no column amout in silver.orders; its columns are "
        "event_id, event_ts, event_date, user_key, order_id, restaurant_id, city, amount, items, tip_amount, "
        "_arrival_date, _ingested_at, _batch_id"])


@pytest.mark.parametrize(("spark_settings", "code", "reason"), [
    # Refused when the session is first used, this one made pyspark's error formatting recurse.
    ("conf: {spark.sql.shuffle.partitions: abc}", 2,
     "The value 'abc' in the config \"spark.sql.shuffle.partitions\" is invalid"),
    # Delta checks its own only where it reads them, part-way through a job.
    ("conf: {spark.databricks.delta.snapshotPartitions: x}", 2,
     "The value 'x' in the config \"spark.databricks.delta.snapshotPartitions\" is invalid"),
    # Refused by the java launcher, and by the JVM once up: no second start, no Maven.
    ("conf: {spark.driver.memory: lots}", 1, "Spark did not start: Invalid maximum heap size: -Xmxlots"),
    ("master: local[x]", 1, "could not start Spark: Could not parse Master URL: 'local[x]'"),
])
def test_a_spark_setting_spark_refuses_is_one_line(
    env: dict[str, str], tmp_path: Path, spark_settings: str, code: int, reason: str
) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(env["LAKEWARD_CONF_DIR"], conf)
    (conf / "local.yml").write_text(
        f"privacy:\n  generate_key_if_missing: true\nspark:\n  {spark_settings}\n"
    )
    own = {**env, "LAKEWARD_CONF_DIR": str(conf), "LAKEWARD_HOME": str(tmp_path / "home")}
    # The timeout is only against a hang (there was one); a loaded machine takes a minute.
    result = lakeward(own, "sql", "SELECT 1", timeout=600)
    assert result.returncode == code, result.stderr[-3000:]
    # A new data root resolves the Delta jars; when a process of the other test worker
    # resolves at that moment, this one logs that it waits, which is no part of the error.
    waiting = "waiting for another process that is resolving the Spark packages"
    lines = [line for line in result.stderr.strip().splitlines() if not line.endswith(waiting)]
    assert len(lines) == 1 and lines[0].startswith("lakeward: error: ") and reason in lines[0], lines


def test_an_error_while_rows_are_printed_is_spark_s_own_line(
    spark: SparkSession, base_settings: Settings
) -> None:
    # json and csv stream rows from the JVM; an error there reaches Python unconverted.
    query = "SELECT cast(concat('x', id) AS int) AS n FROM range(3)"
    for output in ("json", "csv", "table"):
        with pytest.raises(Exception) as raised:
            cli._sql(base_settings, argparse.Namespace(query=query, format=output, limit=None))
        assert "[CAST_INVALID_INPUT]" in cli._one_line(raised.value), output


def test_sql_prints_every_row_unless_limited(
    spark: SparkSession, base_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    query = "SELECT id FROM range(2500)"
    assert cli._sql(base_settings, argparse.Namespace(query=query, format="json", limit=None)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(2500))

    assert cli._sql(base_settings, argparse.Namespace(query=query, format="csv", limit=3)) == 0
    assert capsys.readouterr().out.splitlines() == ["id", "0", "1", "2"]

    # JSON has no NaN or infinity: they print as text, as Spark's to_json writes them.
    special = "SELECT double('NaN') AS a, array(double('inf'), -double('inf'), 1.5D) AS b"
    assert cli._sql(base_settings, argparse.Namespace(query=special, format="json", limit=None)) == 0
    assert json.loads(capsys.readouterr().out) == {"a": "NaN", "b": ["Infinity", "-Infinity", 1.5]}

    # A JSON object keeps one value per key: two columns of one name are refused.
    with pytest.raises(ValueError, match="more than one column named 'x'"):
        cli._sql(base_settings, argparse.Namespace(query="SELECT 1 AS x, 2 AS x", format="json", limit=None))
    nested = "SELECT array(struct(1 AS a, 2 AS a)) AS s"
    with pytest.raises(ValueError, match="column 's' has more than one field named 'a'"):
        cli._sql(base_settings, argparse.Namespace(query=nested, format="json", limit=None))
    # PySpark cannot collect a calendar interval: it prints as Spark's text.
    interval = "SELECT make_interval(0, 1, 0, 2) AS i, X'0A0B' AS bin"
    assert cli._sql(base_settings, argparse.Namespace(query=interval, format="json", limit=None)) == 0
    assert json.loads(capsys.readouterr().out) == {"i": "1 months 2 days", "bin": "Cgs="}
    # So do the other intervals, at any depth, and map keys that are not text (JSON keys are).
    others = ("SELECT INTERVAL '1-2' YEAR TO MONTH AS y, array(INTERVAL '1' DAY) AS d, "
              "map(named_struct('a', 1), 'v') AS m, map(array(1, 2), X'0A') AS n")
    assert cli._sql(base_settings, argparse.Namespace(query=others, format="json", limit=None)) == 0
    assert json.loads(capsys.readouterr().out) == {
        "y": "INTERVAL '1-2' YEAR TO MONTH", "d": ["INTERVAL '1' DAY"],
        "m": {"{1}": "v"}, "n": {"[1, 2]": "Cg=="},
    }
    # Binary inside a key is base64 too: as UTF-8 text, X'FF' and X'FE' would be one key.
    binary_keys = ("SELECT map(named_struct('k', X'FF'), 1, named_struct('k', X'FE'), 2) AS m, "
                   "map(array(X'0102'), 'x') AS a")
    assert cli._sql(base_settings, argparse.Namespace(query=binary_keys, format="json", limit=None)) == 0
    assert json.loads(capsys.readouterr().out) == {"m": {"{/w==}": 1, "{/g==}": 2}, "a": {"[AQI=]": "x"}}
    same_text = "SELECT map(array('a, b'), 1, array('a', 'b'), 2) AS m"
    with pytest.raises(Exception) as raised:
        cli._sql(base_settings, argparse.Namespace(query=same_text, format="json", limit=None))
    assert SAME_TEXT_KEYS in cli._one_line(raised.value)
    # A query that makes a repeated key itself still gets Spark's own error.
    repeated = "SELECT map_from_arrays(array(array(1), array(1)), array(1, 2)) AS m"
    with pytest.raises(Exception, match="DUPLICATED_MAP_KEY"):
        cli._sql(base_settings, argparse.Namespace(query=repeated, format="json", limit=None))
    # A variant is the JSON it holds, as to_json writes it, not a string of JSON.
    variant = ("SELECT parse_json('{\"a\": 1, \"b\": [0.1, \"x\", null, 12345678901234567890.5]}') AS v, "
               "array(parse_json('true')) AS arr, CAST(NULL AS VARIANT) AS n")
    assert cli._sql(base_settings, argparse.Namespace(query=variant, format="json", limit=None)) == 0
    assert json.loads(capsys.readouterr().out) == {
        "v": {"a": 1, "b": [0.1, "x", None, "12345678901234567890.5"]}, "arr": [True], "n": None,
    }


def test_sql_table_and_csv_print_values_as_spark_does(
    spark: SparkSession, base_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    query = ("SELECT array(1, NULL) AS a, map('k', 1) AS m, named_struct('x', 1, 'y', 'b') AS s, "
             "true AS t, X'0A0B' AS bin, make_interval(0, 1) AS i, 2 AS n, 3 AS n")
    assert cli._sql(base_settings, argparse.Namespace(query=query, format="csv", limit=None)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "a,m,s,t,bin,i,n,n", '"[1, null]",{k -> 1},"{1, b}",true,0A0B,1 months,2,3']
    assert cli._sql(base_settings, argparse.Namespace(query=query, format="table", limit=None)) == 0
    row = capsys.readouterr().out.splitlines()[3]
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "[1, null]", "{k -> 1}", "{1, b}", "true", "0A0B", "1 months", "2", "3"]

    # Binary inside other types is hex too (a cast would decode it as UTF-8); a null stays null.
    nested = ("SELECT array(X'41', NULL) AS a, map(X'42', named_struct('b', X'43', 'n', 1)) AS m, "
              "named_struct('s', named_struct('b', X'0A')) AS s, "
              "CAST(NULL AS STRUCT<b: BINARY>) AS z, "
              "named_struct('b', X'01', 'B', 2, 'b', X'03') AS names")
    assert cli._sql(base_settings, argparse.Namespace(query=nested, format="csv", limit=None)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "a,m,s,z,names", '"[41, null]","{42 -> {43, 1}}",{{0A}},,"{01, 2, 03}"']

    # Floating-point numbers and timestamps too; Python's text of them is not Spark's.
    numbers = ("SELECT 1e10D AS d, double('NaN') AS n, -double('inf') AS i, CAST(0.1 AS FLOAT) AS f, "
               "TIMESTAMP'2026-01-01 00:00:00.5' AS t, TIMESTAMP_NTZ'2026-01-02 03:04:05' AS z, "
               "array(0.25D) AS a, CAST(0 AS DECIMAL(20, 10)) AS z0, 0.00000001BD AS tiny")
    assert cli._sql(base_settings, argparse.Namespace(query=numbers, format="csv", limit=None)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "d,n,i,f,t,z,a,z0,tiny",
        "1.0E10,NaN,-Infinity,0.1,2026-01-01 00:00:00.5,2026-01-02 03:04:05,[0.25],0.0000000000,0.00000001",
    ]
    assert cli._sql(base_settings, argparse.Namespace(query=numbers, format="json", limit=None)) == 0
    assert json.loads(capsys.readouterr().out) == {
        "d": 1e10, "n": "NaN", "i": "-Infinity", "f": 0.1, "t": "2026-01-01 00:00:00.5",
        "z": "2026-01-02 03:04:05", "a": [0.25], "z0": 0.0, "tiny": 1e-08}

    # Dates and times too: Python's date stops at the year 9999, Spark's does not.
    dates = "SELECT make_date(10000, 1, 1) AS far, array(DATE'2026-01-02') AS a, TIME'12:34:56.789' AS t"
    assert cli._sql(base_settings, argparse.Namespace(query=dates, format="csv", limit=None)) == 0
    assert capsys.readouterr().out.splitlines() == ["far,a,t", "+10000-01-01,[2026-01-02],12:34:56.789"]
    assert cli._sql(base_settings, argparse.Namespace(query=dates, format="json", limit=None)) == 0
    assert json.loads(capsys.readouterr().out) == {
        "far": "+10000-01-01", "a": ["2026-01-02"], "t": "12:34:56.789"}

    # As Spark's CSV writer: a null is an empty field, an empty string is "".
    empty = "SELECT '' AS e, CAST(NULL AS STRING) AS n, 'say \"hi\", twice' AS q"
    assert cli._sql(base_settings, argparse.Namespace(query=empty, format="csv", limit=None)) == 0
    assert capsys.readouterr().out.splitlines() == ["e,n,q", '"",,"say ""hi"", twice"']


def test_a_table_made_by_sql_is_delta_and_the_statement_prints_nothing(
    spark: SparkSession, base_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = f"cli_{uuid.uuid4().hex[:8]}"
    spark.sql(f"CREATE SCHEMA {schema}")
    for output in ("table", "csv", "json"):
        query = f"CREATE TABLE {schema}.made_{output} AS SELECT 1 AS one"
        assert cli._sql(base_settings, argparse.Namespace(query=query, format=output, limit=None)) == 0
        assert capsys.readouterr().out == ""
        detail = spark.sql(f"DESCRIBE DETAIL {schema}.made_{output}").first()
        assert detail is not None and detail["format"] == "delta"
    spark.sql(f"DROP SCHEMA {schema} CASCADE")


def test_sql_output_cut_short_by_its_reader_is_not_an_error(env: dict[str, str]) -> None:
    command = [*LAKEWARD, "sql", "--format", "csv", "SELECT id FROM range(200000)"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as reader:
        assert reader.stdout is not None and reader.stderr is not None
        assert [reader.stdout.readline() for _ in range(2)] == ["id\n", "0\n"]
        reader.stdout.close()
        err = reader.stderr.read()
        assert reader.wait(timeout=300) == 0, err[-3000:]
    assert "Broken pipe" not in err and "Exception ignored" not in err


def test_help_lists_every_command() -> None:
    result = lakeward(os.environ, "--help")
    assert result.returncode == 0
    for command in ("generate", "run", "demo", "sql"):
        assert command in result.stdout
