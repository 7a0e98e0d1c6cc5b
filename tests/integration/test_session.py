"""The session lakeward builds runs with the JVM options its settings name."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakeward.config import ConfigError, Settings, load_settings
from lakeward.session import (
    DELTA_CATALOG,
    _check_catalog_home,
    _ivy_home,
    _known_delta_jars,
    _maven_repository,
    _resolving_alone,
    check_cluster_session,
    delta_jars_note,
    get_spark,
    java_user_home,
    local_dir,
)


def test_driver_jvm_runs_with_the_configured_options(spark: SparkSession, base_settings: Settings) -> None:
    management = spark.sparkContext._jvm.java.lang.management.ManagementFactory  # type: ignore[union-attr]
    arguments = list(management.getRuntimeMXBean().getInputArguments())
    assert base_settings.spark.driver_java_options
    for option in base_settings.spark.driver_java_options:
        assert option in arguments
    assert f"-Dderby.system.home={base_settings.metastore_dir}" in arguments


def test_a_session_in_another_time_zone_than_utc_is_refused(
    spark: SparkSession, base_settings: Settings
) -> None:
    """A notebook's or a cluster's session may be in any zone; lakeward's days are UTC days."""
    assert get_spark(base_settings) is spark
    spark.conf.set("spark.sql.session.timeZone", "Europe/Paris")
    try:
        with pytest.raises(ConfigError, match=r"time zone is 'Europe/Paris', but lakeward dates .* in UTC"):
            get_spark(base_settings)
        spark.conf.set("spark.sql.session.timeZone", "Etc/UTC")
        assert get_spark(base_settings) is spark
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")


def test_the_catalog_must_keep_its_tables_under_this_data_root(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    link = tmp_path / "link to the root"
    link.symlink_to(base_settings.data_root)
    _check_catalog_home(spark, load_settings("local", data_root=link))  # the same directory

    elsewhere = load_settings("local", data_root=tmp_path / "copy")
    with pytest.raises(ConfigError, match="this data root was copied or moved"):
        _check_catalog_home(spark, elsewhere)


def test_a_cluster_session_must_have_a_catalog_that_outlives_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = load_settings("dev", data_root=tmp_path)
    assert cluster.spark.mode == "cluster"
    spark_own = {"catalog": "in-memory", "session_catalog": DELTA_CATALOG, "default_catalog": "spark_catalog"}
    for master in ("local[2]", "spark://host:7077"):
        with pytest.raises(ConfigError, match=r"in-memory one, so no later job would see.*--env local"):
            check_cluster_session(cluster, master=master, **spark_own)

    # A Hive metastore, or another catalog as the default or in Delta's place, keeps the tables.
    for given in ({"catalog": "hive"}, {"default_catalog": "unity"}, {"session_catalog": "some.Catalog"}):
        with caplog.at_level("WARNING", logger="lakeward"):
            check_cluster_session(cluster, master="spark://host:7077", **{**spark_own, **given})
        assert not caplog.records
    # So does a catalog every table names, but not one that leaves a table in spark_catalog.
    named = {key: f"unity.{name}" for key, name in cluster.tables.items()}
    check_cluster_session(cluster.model_copy(update={"tables": named}), master="yarn", **spark_own)
    named["ml_predictions"] = cluster.tables["ml_predictions"]
    with pytest.raises(ConfigError, match="in-memory one"):
        check_cluster_session(cluster.model_copy(update={"tables": named}), master="yarn", **spark_own)
    with caplog.at_level("WARNING", logger="lakeward"):
        check_cluster_session(cluster, master="local[2]", **{**spark_own, "catalog": "hive"})
    assert "spark.mode is cluster (env dev) but the master is local[2]" in caplog.text


def test_the_first_start_notes_the_delta_jars_it_resolved(
    spark: SparkSession, base_settings: Settings
) -> None:
    """A later start on this data root puts these files on the classpath instead of resolving."""
    noted = delta_jars_note(base_settings).read_text(encoding="utf-8").splitlines()
    resolved = (spark.sparkContext.getConf().get("spark.jars") or "").split(",")
    assert [Path(jar).name for jar in noted] == [uri.rsplit("/", 1)[-1] for uri in resolved]
    assert any(Path(jar).name.startswith("io.delta_delta-spark_") for jar in noted)
    assert all(Path(jar).is_file() for jar in noted)


def test_a_note_is_used_only_while_every_jar_it_names_is_there(tmp_path: Path) -> None:
    settings = load_settings("local", data_root=tmp_path / "root")
    assert _known_delta_jars(settings) is None  # no note yet
    jars = [tmp_path / "a.jar", tmp_path / "b.jar"]
    for jar in jars:
        jar.write_bytes(b"PK")
    note = delta_jars_note(settings)
    note.parent.mkdir(parents=True)
    note.write_text("".join(f"{jar}\n" for jar in jars))
    assert _known_delta_jars(settings) == [str(jar) for jar in jars]
    jars[1].unlink()  # say, a cleaned Ivy cache
    assert _known_delta_jars(settings) is None


def test_starts_that_resolve_packages_wait_for_each_other(tmp_path: Path) -> None:
    """Ivy's cache is not safe for two processes resolving at once (two first starts on a new machine)."""
    ivy, entered = tmp_path / "ivy", tmp_path / "entered"
    other = textwrap.dedent(f"""
        import logging, sys
        from pathlib import Path
        from lakeward.session import _resolving_alone
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
        with _resolving_alone(Path({str(ivy)!r})):
            Path({str(entered)!r}).touch()
    """)
    with _resolving_alone(ivy):
        waiting = subprocess.Popen([sys.executable, "-c", other], stderr=subprocess.PIPE, text=True)
        assert waiting.stderr is not None
        assert "waiting for another process that is resolving" in waiting.stderr.readline()
        assert not entered.exists()
    assert waiting.wait(timeout=60) == 0
    assert entered.exists()


def test_the_lock_is_in_the_ivy_directory_spark_resolves_into(
    spark: SparkSession, base_settings: Settings
) -> None:
    noted = delta_jars_note(base_settings).read_text(encoding="utf-8").splitlines()
    assert {Path(jar).parent for jar in noted} == {_ivy_home(base_settings) / "jars"}
    conf = {**base_settings.spark.conf, "spark.jars.ivy": "~/elsewhere"}
    moved = base_settings.model_copy(update={"spark": base_settings.spark.model_copy(update={"conf": conf})})
    assert _ivy_home(moved) == Path.home() / "elsewhere"


def test_the_lock_and_the_maven_check_follow_the_jvm_home_not_home_variable(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The JVM takes user.home from the password database: a process with another
    # $HOME still resolves into the same Ivy cache, so it must wait on the same lock.
    jvm_home = spark.sparkContext._jvm.java.lang.System.getProperty("user.home")  # type: ignore[union-attr]
    monkeypatch.setenv("HOME", str(tmp_path / "other-home"))
    assert java_user_home() == Path(jvm_home)
    assert _ivy_home(base_settings) == Path(jvm_home) / ".ivy2.5.2"
    assert _maven_repository() == Path(jvm_home) / ".m2" / "repository"


def test_spark_s_scratch_space_is_per_process_and_a_killed_one_s_is_removed(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    mine = f"{socket.gethostname()}-{os.stat('/proc/self/ns/pid').st_ino}"
    own = Path(spark.sparkContext.getConf().get("spark.local.dir"))
    assert own == base_settings.data_root / "tmp" / "spark" / f"{mine}-{os.getpid()}"
    assert any(own.glob("spark-*"))  # Spark's own directory of this session
    settings = base_settings.model_copy(update={"data_root": tmp_path})
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    spark_dirs = tmp_path / "tmp" / "spark"
    left = {
        "killed": spark_dirs / f"{mine}-{ended}",
        "running": spark_dirs / f"{mine}-1",
        "other host": spark_dirs / f"elsewhere.example-{mine.rsplit('-', 1)[1]}-{ended}",
        "other pid namespace": spark_dirs / f"{socket.gethostname()}-1-{ended}",
    }
    for directory in left.values():
        (directory / "spark-x" / "userFiles-y").mkdir(parents=True)
    assert local_dir(settings) == str(spark_dirs / f"{mine}-{os.getpid()}")
    assert {what: path.exists() for what, path in left.items()} == {
        "killed": False, "running": True, "other host": True, "other pid namespace": True,
    }


def test_a_running_session_without_delta_is_refused(tmp_path: Path) -> None:
    """A notebook's plain session, handed back, would know neither Delta nor the data root's tables."""
    script = textwrap.dedent(f"""
        from pyspark.sql import SparkSession
        from lakeward.config import ConfigError, load_settings
        from lakeward.session import get_spark

        SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").config(
            "spark.sql.session.timeZone", "UTC").getOrCreate()
        try:
            get_spark(load_settings("local", data_root={str(tmp_path / "home")!r}))
        except ConfigError as err:
            print("refused:", err)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "refused: a Spark session without Delta's extension and catalog is already running" in run.stdout
    assert not (tmp_path / "home").exists(), "refused before the data root is held"
