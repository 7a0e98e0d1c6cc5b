"""The one place a SparkSession is built.

Local mode builds ``master`` with the Delta extension, a warehouse and a
persistent Derby metastore under the data root, so a table written by one
process is visible by name in the next. The Delta JVM side is the real
``io.delta`` artifact from Maven Central at the version matching the installed
``delta-spark``; Spark's resolver fetches it on first use into the per-user Ivy
cache, and when that resolver cannot reach Maven Central, Maven fetches it into
``~/.m2/repository``, which Spark's resolver also reads::

    spark = get_spark(load_settings("local"))
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata, resources
from pathlib import Path
from urllib.parse import unquote, urlparse

from py4j.java_gateway import JavaClass
from pyspark import SparkContext
from pyspark.sql import SparkSession

from lakeward import class_data, root_lock
from lakeward.config import TABLE_KEYS, TIME_ZONE_CONF, ConfigError, Settings, is_utc
from lakeward.error_text import jvm_error_message, one_line

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
SCALA_BINARY = "2.13"
# Set in every process of a Databricks cluster (notebooks, jobs), to the runtime version.
DATABRICKS_RUNTIME_VAR = "DATABRICKS_RUNTIME_VERSION"


class SessionError(RuntimeError):
    """A SparkSession could not be built."""


class SparkRefused(SessionError):
    """Spark did not start, and another start would fail the same way.

    The JVM came up and failed (a bad master URL), or spark-submit or the java
    launcher stopped before it did and said why (a bad driver memory).
    """


def delta_coordinates() -> str:
    """Maven coordinates of the Delta artifact matching the installed pyspark and delta-spark.

    >>> delta_coordinates()  # doctest: +SKIP
    'io.delta:delta-spark_4.1_2.13:4.3.1'
    """
    spark_minor = ".".join(metadata.version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_{SCALA_BINARY}:{metadata.version('delta-spark')}"


def get_spark(settings: Settings) -> SparkSession:
    """Return the process's SparkSession, building it on first call."""
    active = SparkSession.getActiveSession()
    if active is not None:
        if settings.spark.mode == "local":
            require_delta(active)
        return require_utc(active)
    mode = settings.spark.mode
    if mode == "databricks":
        check_databricks(settings)
        return require_utc(SparkSession.builder.getOrCreate())
    check_master(settings)
    _prepare_environment(settings)
    root_lock.hold(settings)
    builder = _base_builder(settings)
    if mode == "local":
        builder = _local_catalog(builder, settings)
    if _submitted():
        # spark-submit already started the JVM with its master and packages.
        spark = builder.getOrCreate()
        if mode == "local":
            _quiet_derby(spark, settings)
    else:
        spark = _start_jvm(builder, settings)
    _check_sql_conf(spark, settings)
    require_utc(spark)
    if mode == "local":
        # Before the catalog opens: the next command waits for this JVM to close it.
        jvm = spark.sparkContext._jvm
        assert jvm is not None  # the session is up
        root_lock.note_jvm(settings, jvm.java.lang.ProcessHandle.current().pid())
        _check_catalog_home(spark, settings)
    else:
        conf = spark.conf
        check_cluster_session(
            settings,
            master=conf.get("spark.master") or "",
            catalog=conf.get("spark.sql.catalogImplementation") or "in-memory",
            session_catalog=conf.get("spark.sql.catalog.spark_catalog") or DELTA_CATALOG,
            default_catalog=conf.get("spark.sql.defaultCatalog") or "spark_catalog",
        )
    return spark


def get_reader_spark(settings: Settings) -> SparkSession:
    """A local session that reads a data root another process holds, without its catalog.

    The data root's Derby catalog serves one JVM at a time, so this session
    keeps its catalog in memory and takes no lock; :mod:`lakeward.read_beside`
    registers the warehouse's Delta tables in it by path. Delta gives every
    reader a consistent snapshot of a table while another process commits.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    _prepare_environment(settings)
    builder = (
        _base_builder(settings)
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.sql.warehouse.dir", str(settings.warehouse_dir))
        .config("spark.local.dir", local_dir(settings))
    )
    spark = _start_jvm(builder, settings, log_name="spark-reader.log")
    _check_sql_conf(spark, settings)
    return require_utc(spark)


def require_utc(spark: SparkSession) -> SparkSession:
    """``spark``, if its session time zone is UTC; :class:`ConfigError` otherwise.

    Event dates, arrival days and ``feature_ts`` are UTC days; in another zone the
    same events would fall on other days, and a session handed over by a notebook
    or a cluster (or given ``--conf`` by spark-submit) may be in any zone.
    """
    zone = spark.conf.get(TIME_ZONE_CONF) or ""
    if not is_utc(zone):
        raise ConfigError(
            f"the Spark session's time zone is {zone!r}, but lakeward dates events and features in UTC: "
            f"set {TIME_ZONE_CONF} to UTC"
        )
    return spark


def require_delta(spark: SparkSession) -> None:
    """Refuse a running session that lakeward did not build: one without Delta's extension and catalog.

    A notebook often starts a plain session first; handed back, it would know neither
    the Delta tables nor the data root's catalog, and fail later on a missing table.
    """
    extensions = {name.strip() for name in (spark.conf.get("spark.sql.extensions") or "").split(",")}
    catalog = (spark.conf.get("spark.sql.catalog.spark_catalog") or "").strip()
    if DELTA_EXTENSION in extensions and catalog == DELTA_CATALOG:
        return
    if os.environ.get(DATABRICKS_RUNTIME_VAR):
        # The cluster's own session, with Databricks' catalog: never one to stop.
        raise ConfigError("spark.mode is local, but this is a Databricks runtime: set spark.mode to "
                          "databricks to use the cluster's session")
    raise ConfigError(
        "a Spark session without Delta's extension and catalog is already running in this process, "
        "and a process has one session: stop it (spark.stop()) and call get_spark again to have "
        "lakeward build its own, on the data root's catalog"
    )


def check_master(settings: Settings) -> None:
    """Refuse a ``cluster`` mode whose driver lakeward would start on a local master.

    It would quietly run the job on this machine without the cluster's catalog.
    Under spark-submit the submit command's master counts, not the settings'.
    """
    if settings.spark.mode == "cluster" and settings.spark.master.startswith("local") and not _submitted():
        raise ConfigError(
            f"spark.mode is cluster but spark.master is {settings.spark.master!r}: set spark.master "
            f"to the cluster's master URL in {settings.env_file}, or run the job with spark-submit"
        )


def check_databricks(settings: Settings) -> None:
    """Refuse ``databricks`` mode off a Databricks runtime.

    There, building a session would quietly start a bare local Spark, without Delta and
    with its warehouse in the current directory.
    """
    if settings.spark.mode == "databricks" and not os.environ.get(DATABRICKS_RUNTIME_VAR):
        raise ConfigError(
            f"spark.mode is databricks, but this is not a Databricks runtime (no "
            f"{DATABRICKS_RUNTIME_VAR}) and no Spark session is running: set spark.mode to local "
            f"or cluster in {settings.env_file}, or run the job on Databricks"
        )


def check_cluster_session(
    settings: Settings, *, master: str, catalog: str, session_catalog: str, default_catalog: str
) -> None:
    """Refuse a ``cluster`` session whose tables would be gone when it ends; warn on a local master.

    The cluster's catalog (a Hive metastore, or another catalog made the default) comes
    from spark-submit's conf, spark-defaults.conf or the environment's config file. Without
    one, Spark keeps the catalog in memory: a job would write its tables' files and
    report success, and the next job would neither see the tables nor be able to create
    them over those files.
    """
    # Table names may name their catalog (``unity.silver.orders``); two-part names live in
    # the default one.
    catalogs = {
        name.split(".")[0] if name.count(".") == 2 else default_catalog
        for name in map(settings.table, TABLE_KEYS)
    }
    in_memory = catalog == "in-memory" and session_catalog == DELTA_CATALOG and "spark_catalog" in catalogs
    if in_memory:
        raise ConfigError(
            f"spark.mode is cluster (env {settings.env}) but the session's catalog is Spark's in-memory "
            "one, so no later job would see the tables: give the job the cluster's metastore "
            f"(spark.sql.catalogImplementation=hive and its connection, in spark-submit's conf or "
            f"{settings.env_file}), or use --env local to run on this machine"
        )
    if master.startswith("local"):
        log.warning(
            "spark.mode is cluster (env %s) but the master is %s: the job runs on this machine, "
            "with the catalog and warehouse its Spark conf names; use --env local for lakeward's "
            "own under the data root", settings.env, master,
        )


def shuffle_partitions(spark: SparkSession) -> int:
    """The session's ``spark.sql.shuffle.partitions``, for shuffles whose count is set explicitly."""
    return int(spark.conf.get("spark.sql.shuffle.partitions") or "200")


def _prepare_environment(settings: Settings) -> None:
    # Workers must run the same interpreter (and virtualenv) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if settings.spark.mode == "local":
        # Avoids a slow reverse DNS lookup of the host name at start-up.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def _base_builder(settings: Settings) -> SparkSession.Builder:
    builder = (
        SparkSession.builder.appName(settings.spark.app_name)
        .config("spark.sql.extensions", DELTA_EXTENSION)
        .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
        # A table made in SQL without USING (``lakeward sql "CREATE TABLE ..."``)
        # is Delta, as every table of the data root is, and as on Databricks.
        .config("spark.sql.sources.default", "delta")
        .config("spark.ui.enabled", str(settings.spark.ui).lower())
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in settings.spark.conf.items():
        builder = builder.config(key, value)
    return builder


def _submitted() -> bool:
    # spark-submit starts the JVM first and hands its gateway to Python.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _local_catalog(builder: SparkSession.Builder, settings: Settings) -> SparkSession.Builder:
    """Hive catalog (Derby) and warehouse under the data root; ``cluster`` mode uses the cluster's."""
    root = settings.data_root
    settings.metastore_dir.mkdir(parents=True, exist_ok=True)
    settings.warehouse_dir.mkdir(parents=True, exist_ok=True)
    metastore_url = f"jdbc:derby:;databaseName={settings.metastore_dir / 'metastore_db'};create=true"
    return (
        builder.config("spark.sql.warehouse.dir", str(settings.warehouse_dir))
        .config("spark.hadoop.javax.jdo.option.ConnectionURL", metastore_url)
        .config("spark.sql.catalogImplementation", "hive")
        .config("spark.local.dir", local_dir(settings))
        # Hive's session makes this directory at start and never removes it; by
        # default it is /tmp/<session id>_resources, a new one per process.
        # Lakeward adds no Hive resources, so every process shares one.
        .config("spark.hadoop.hive.downloaded.resources.dir", str(root / "tmp" / "hive_resources"))
        .config("spark.sql.streaming.checkpointLocation", str(root / "checkpoints"))
        .enableHiveSupport()
    )


def local_dir(settings: Settings) -> str:
    """Spark's scratch directory of this process: ``tmp/spark/<host>-<pid namespace>-<pid>``.

    Spark removes what it writes there (copies of the jars, block files: about
    90 MB) when its JVM exits, but not when the process is killed. A start
    removes the directories of processes that have ended, on this host and in
    this pid namespace only (a container may share the data root and the host
    name), and none at all where the namespace cannot be read.
    """
    parent = settings.data_root / "tmp" / "spark"
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return str(parent / f"{socket.gethostname()}-{os.getpid()}")
    mine = f"{socket.gethostname()}-{namespace}"
    if parent.is_dir():
        for entry in parent.iterdir():
            where, _, pid = entry.name.rpartition("-")
            if where == mine and pid.isdigit() and not _running(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
    return str(parent / f"{mine}-{os.getpid()}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _check_sql_conf(spark: SparkSession, settings: Settings) -> None:
    """Build the session's SQL state now, so that a SQL conf value Spark refuses is a config error.

    Building the state checks every value of the Spark conf (the settings' and
    spark-submit's) against the entries Spark knows then; Delta's are known once
    its conf object is loaded, so it is loaded first. Otherwise a query builds
    the state, with the session active, and pyspark formats the error by reading
    that session's conf, which fails the same way: the formatting recurses
    without end and the command hangs. Without an active session it reads
    Spark's defaults. Delta alone would check its values only where it reads
    them, which may be part-way through a job.
    """
    jvm = spark._jvm
    delta_conf = getattr(jvm, "org.apache.spark.sql.delta.sources.DeltaSQLConf")
    if not isinstance(delta_conf, JavaClass):
        raise SessionError(
            f"the Delta classes are not on the driver's classpath: run the job with "
            f"--packages {delta_coordinates()}"
        )
    delta_conf.DELTA_SNAPSHOT_PARTITIONS()  # loads the object, which registers Delta's entries
    session_class = getattr(jvm, "org.apache.spark.sql.SparkSession")
    session_class.clearActiveSession()
    try:
        spark._jsparkSession.sessionState()
    except Exception as error:  # noqa: BLE001 - pyspark converts JVM errors to several classes
        raise ConfigError(
            f"Spark refused a value of spark.conf ({settings.conf_dir / 'base.yml'}, "
            f"{settings.env_file} or the spark-submit command): {jvm_error_message(error) or error}"
        ) from None
    session_class.setActiveSession(spark._jsparkSession)


def _check_catalog_home(spark: SparkSession, settings: Settings) -> None:
    """Refuse a catalog whose tables live under another data root.

    The Derby catalog records absolute locations, so in a copied or moved data
    root every table name still points at the original's files: reads would show
    them and writes would change them.
    """
    location = spark.catalog.getDatabase("default").locationUri
    path = location.removeprefix("file:")
    path = "/" + path.lstrip("/") if path.startswith("//") else path  # file:///a is file:/a
    # Percent-encoded here (file:/a/50%25off), but taken as it is in case a catalog
    # gives it decoded: a root is refused only when neither reading is this warehouse.
    readings = [Path(unquote(path)), Path(path)]
    found = readings[0]
    if not any(_same_directory(reading, settings.warehouse_dir) for reading in readings):
        raise ConfigError(
            f"the catalog in {settings.metastore_dir} keeps its tables under {found}, not under "
            f"{settings.warehouse_dir}: this data root was copied or moved, and its tables would "
            f"read and write the files under {found}. Use that data root, or an empty one"
        )


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return a.resolve() == b.resolve()


def _quiet_derby(spark: SparkSession, settings: Settings) -> None:
    """Keep Derby's files out of the working directory of a submitted job.

    Derby reads these JVM properties when it boots, at the catalog's first
    use, which comes after the session is built. Values the submit command
    set (``--driver-java-options``) are kept.
    """
    system = spark.sparkContext._jvm.java.lang.System  # type: ignore[union-attr]
    for name, value in _derby_properties(settings).items():
        if system.getProperty(name) is None:
            system.setProperty(name, value)


def _derby_properties(settings: Settings) -> dict[str, str]:
    """Derby's home under the data root, and its log discarded."""
    return {"derby.system.home": str(settings.metastore_dir), "derby.stream.error.file": os.devnull}


def _java_word(option: str) -> str:
    """One JVM option as one word of ``extraJavaOptions``, which Spark splits at spaces.

    Spark's splitting keeps a double-quoted word whole and reads a backslash in it as an
    escape, so a data root or an archive with spaces or quotes in its path still works.
    """
    escaped = option.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _java_property(name: str, value: str) -> str:
    return _java_word(f"-D{name}={value}")


def jvm_options(settings: Settings) -> str:
    """``spark.driver.extraJavaOptions`` of a driver lakeward starts.

    :func:`driver_java_options` and the class archive's options (which may claim the
    archive for this JVM to write).
    """
    return " ".join([driver_java_options(settings), *map(_java_word, class_data.java_options(settings))])


def _start_jvm(
    builder: SparkSession.Builder, settings: Settings, log_name: str = "spark.log"
) -> SparkSession:
    """Start the driver JVM with ``spark.master`` and the Delta artifact.

    The first start in a data root has Spark's resolver find the Delta jars
    (in the per-user Ivy cache, downloading them on first use) and notes the
    files it found under ``tmp/``; later starts put those files on the
    classpath directly, as long as every one of them is still there, which
    spares the resolution (about 1.5 s of every start). If a start that
    resolves fails and the Delta jars are not in the local Maven repository,
    Maven fetches them there and the start is retried once. The JVM maps the
    installation's class archive (:mod:`lakeward.class_data`); with none yet,
    it writes one as it exits.
    """
    builder = builder.master(settings.spark.master).config(
        "spark.driver.extraJavaOptions", jvm_options(settings)
    )
    # A reader beside a running job has a log of its own: a failed start reads its log back.
    jvm_log = settings.data_root / "logs" / log_name
    # Packages of the user's own are resolved on every start, the Delta jars with them.
    own_packages = settings.spark.conf.get("spark.jars.packages", "")
    known = None if own_packages else _known_delta_jars(settings)
    if known is not None:
        own_jars = settings.spark.conf.get("spark.jars", "")
        try:
            jars = ",".join(filter(None, [own_jars, *known]))
            return _launch(builder.config("spark.jars", jars), jvm_log)
        except Exception as error:  # noqa: BLE001 - the JVM reports its failures opaquely
            delta_jars_note(settings).unlink(missing_ok=True)  # the noted jars may be what failed
            if isinstance(error, SparkRefused):
                raise
            log.warning("Spark did not start with the Delta jars noted before; resolving them again")
            builder = builder.config("spark.jars", own_jars)
    packages = ",".join(filter(None, [own_packages, delta_coordinates()]))
    builder = builder.config("spark.jars.packages", packages)
    with _resolving_alone(_ivy_home(settings)):
        try:
            spark = _launch(builder, jvm_log)
        except SparkRefused:
            raise
        except Exception as first_error:  # noqa: BLE001 - the JVM reports resolution failures opaquely
            if _delta_in_maven_repository():
                raise SessionError(
                    f"could not start Spark ({first_error}); see {jvm_log}"
                ) from first_error
            log.warning("Spark could not resolve %s; fetching it with Maven", delta_coordinates())
            _fetch_with_maven(delta_coordinates())
            spark = _launch(builder, jvm_log)
    if not own_packages:
        _note_delta_jars(spark, settings)
    return spark


@contextmanager
def _resolving_alone(ivy: Path) -> Iterator[None]:
    """Hold the lock of Ivy directory ``ivy`` while this process resolves packages.

    Ivy does not guard its cache against two processes: two first starts at once
    (two jobs, or ``lakeward sql`` beside a job, on a new machine or data root)
    can each download into the same cache file and copy over the jars the other
    is loading. Starts that resolve therefore wait for each other; starts from
    a data root's noted jars do not.
    """
    ivy.mkdir(parents=True, exist_ok=True)
    # Closing the file releases the lock.
    with open(ivy / "lakeward-resolve.lock", "w", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is resolving the Spark packages")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ivy_home(settings: Settings) -> Path:
    """The Ivy directory Spark's resolver uses: ``spark.jars.ivy``, else its default since Spark 4.0."""
    return Path(settings.spark.conf.get("spark.jars.ivy") or java_user_home() / ".ivy2.5.2").expanduser()


def java_user_home() -> Path:
    """The directory the JVM's ``user.home`` names, under which Spark's Ivy and Maven keep their caches.

    Java takes it from the user's entry in the password database, not from
    ``$HOME``: a process started with another ``$HOME`` still shares the
    caches, so it must share their lock too.
    """
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # no entry, as for an arbitrary uid in a container
        home = ""
    return Path(home) if home else Path.home()


def delta_jars_note(settings: Settings) -> Path:
    """Where a data root notes the jar files resolved for the Delta coordinates."""
    return settings.data_root / "tmp" / "delta-jars" / (delta_coordinates().replace(":", "_") + ".txt")


def _known_delta_jars(settings: Settings) -> list[str] | None:
    """The noted jar files, or None when there is no note or any of its files is gone."""
    try:
        jars = delta_jars_note(settings).read_text(encoding="utf-8").split("\n")
    except OSError:
        return None
    jars = [jar for jar in jars if jar]
    if not jars or not all(Path(jar).is_file() for jar in jars):
        return None
    return jars


def _note_delta_jars(spark: SparkSession, settings: Settings) -> None:
    """Note the jar files Spark's resolver put on the classpath for the Delta coordinates.

    They are the ``spark.jars`` in the directory the resolver copies to, where
    the Delta artifact's own jar is; jars the configuration names are not noted.
    """
    resolved = spark.sparkContext.getConf().get("spark.jars") or ""
    jars = [Path(unquote(urlparse(uri).path)) for uri in resolved.split(",") if uri.startswith("file:")]
    delta = [jar for jar in jars if jar.name.startswith("io.delta_delta-spark_")]
    if len(delta) != 1:
        return  # not what a resolution of the Delta coordinates gives: resolve again next time
    retrieved = [jar for jar in jars if jar.parent == delta[0].parent]
    note = delta_jars_note(settings)
    note.parent.mkdir(parents=True, exist_ok=True)
    # Written whole, then renamed: a process starting meanwhile reads the old note or the new one.
    partial = note.with_name(f"{note.name}.{os.getpid()}")
    partial.write_text("".join(f"{jar}\n" for jar in retrieved), encoding="utf-8")
    os.replace(partial, note)


def driver_java_options(settings: Settings) -> str:
    """The JVM options of a driver that lakeward starts itself.

    The metastore and logging options, then ``spark.driver_java_options``, then
    any ``spark.driver.extraJavaOptions`` from the Spark conf, which would
    otherwise be replaced rather than added to.
    """
    log4j = resources.files("lakeward") / "resources" / "log4j2.properties"
    return " ".join([
        *[_java_property(name, value) for name, value in _derby_properties(settings).items()],
        _java_property("log4j2.configurationFile", f"file:{log4j}"),
        *map(_java_word, settings.spark.driver_java_options),
        settings.spark.conf.get("spark.driver.extraJavaOptions", ""),
    ]).strip()


def _launch(builder: SparkSession.Builder, jvm_log: Path) -> SparkSession:
    """Start the JVM with its stdout/stderr going to ``jvm_log``.

    Spark's dependency resolver and start-up print dozens of lines on every
    start; the JVM inherits file descriptors when it is spawned, so pointing
    them at a log file for the duration of the launch keeps command output
    clean while the Python side keeps the terminal.
    """
    global _jvm_output
    if os.environ.get("LAKEWARD_SPARK_CONSOLE") == "1":
        return _start(builder, jvm_log, None)
    jvm_log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(jvm_log, "ab") as sink:
        start = sink.tell()
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            spark = _start(builder, jvm_log, start)
            _jvm_output = (jvm_log, start)
            return spark
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# The log the JVM this process started writes to, and where its output begins.
_jvm_output: tuple[Path, int] | None = None
# The end of that output a failing command reads, for the JVM's last words.
_TAIL_BYTES = 4 << 20


def out_of_memory() -> str | None:
    """The reason of the ``OutOfMemoryError`` of the JVM this process started, once it stopped.

    That is when the JVM wrote one (``Java heap space``...) to its log and its
    SparkContext has stopped. Spark then shuts its context down, and a waiting call fails as its job was
    cancelled ("SparkContext was shut down"), which says nothing of memory. A
    context still running is not this: another process writing the same log
    (readers beside a job share one) may have run out.
    """
    if _jvm_output is None or not _context_stopped():
        return None
    path, start = _jvm_output
    try:
        output = _output_since(path, start, _TAIL_BYTES)
    except OSError:
        return None
    found = re.findall(r"java\.lang\.OutOfMemoryError: ([^\n]+)", output)
    return found[-1].strip() if found else None


def _context_stopped() -> bool:
    context = SparkContext._active_spark_context
    if context is None or context._jsc is None:
        return True
    try:
        return bool(context._jsc.sc().isStopped())
    except Exception:  # noqa: BLE001 - a JVM that is gone answers nothing
        return True


def _output_since(jvm_log: Path, start: int, limit: int | None = None) -> str:
    """What the JVM wrote to ``jvm_log`` since ``start``; at most its last ``limit`` bytes."""
    with open(jvm_log, "rb") as log_file:
        end = log_file.seek(0, os.SEEK_END)
        log_file.seek(start if limit is None else max(start, end - limit))
        return log_file.read().decode("utf-8", errors="replace")


def _start(builder: SparkSession.Builder, jvm_log: Path, start: int | None) -> SparkSession:
    """``builder.getOrCreate()``, raising ``SparkRefused`` when a new start would fail the same way.

    That is when the JVM came up (its classpath can no longer change), or when
    its output since ``start`` gives a reason other than resolving the jars.
    """
    try:
        return builder.getOrCreate()
    except Exception as error:
        if SparkContext._gateway is not None:
            stopped = None if start is None else _stopped_because(jvm_log, start)
            reason = stopped or one_line(error)
            raise SparkRefused(f"could not start Spark: {reason} (its output: {jvm_log})") from error
        refusal = None if start is None else _refusal(jvm_log, start)
        if refusal is not None:
            raise SparkRefused(f"Spark did not start: {refusal} (its output: {jvm_log})") from error
        raise


def _refusal(jvm_log: Path, start: int) -> str | None:
    """Why spark-submit stopped before the JVM came up, from what it wrote since ``start``.

    None when it wrote no such reason, or when the reason is a dependency that did
    not resolve, which fetching it otherwise can cure.
    """
    output = _output_since(jvm_log, start)
    if any(mark in output for mark in _RESOLVING):
        return None
    reason, lines = None, output.splitlines()
    for number, line in enumerate(lines):
        if line == _JAVA_REFUSED and number > 0:  # the java launcher's reason (a bad -Xmx) comes before
            reason = lines[number - 1].strip()
        elif line == _VM_FAILED and number + 1 < len(lines):  # the JVM's own (a heap too small) after
            reason = lines[number + 1].strip()
        elif line.startswith('Exception in thread "main" '):
            reason = line.split(": ", 1)[-1].strip()
        elif line.startswith("Error: ") and line != _JAVA_EXITS:
            reason = line.removeprefix("Error: ").strip()
    return reason or None


def _stopped_because(jvm_log: Path, start: int) -> str | None:
    """Why Spark stopped the context it was starting, from what it logged since ``start``.

    The error the start raises then only says the context is stopped; the scheduler
    logged why: the cluster's master did not answer, or killed the application.
    """
    output = _output_since(jvm_log, start, _TAIL_BYTES)
    found = re.findall(
        r"(All masters are unresponsive! Giving up\.|Application has been killed\. Reason: .+)", output
    )
    return found[-1].strip() if found else None


_JAVA_REFUSED = "Error: Could not create the Java Virtual Machine."
_JAVA_EXITS = "Error: A fatal exception has occurred. Program will exit."
_VM_FAILED = "Error occurred during initialization of VM"
# What a failure of Spark's dependency resolution prints: fetching the jars otherwise may cure it.
_RESOLVING = ("unresolved dependency", "download failed", "MavenUtils", "DependencyUtils")


def _maven_repository() -> Path:
    return java_user_home() / ".m2" / "repository"


def _delta_in_maven_repository() -> bool:
    group, artifact, version = delta_coordinates().split(":")
    jar = _maven_repository() / group.replace(".", "/") / artifact / version
    return (jar / f"{artifact}-{version}.jar").exists()


def _fetch_with_maven(coordinates: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SessionError(
            f"Spark could not download {coordinates} and Maven (mvn) is not installed to fetch it"
        )
    result = subprocess.run(  # noqa: S603 - fixed argument list
        [mvn, "-q", "-B", "dependency:get", f"-Dartifact={coordinates}", "-Dtransitive=true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise SessionError(f"Maven could not fetch {coordinates}: {' | '.join(tail)}")
