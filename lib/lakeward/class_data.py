"""A class-data-sharing archive for the driver JVM that lakeward starts.

A new driver JVM loads about 20,000 Spark, Hive and Delta classes from their
jars and verifies each one: about a third of a short command such as
``lakeward sql``. With JDK class data sharing it maps them, already parsed and
verified, from an archive instead (``-XX:SharedArchiveFile``)::

    options = java_options(settings)   # for the JVM about to start

The first JVM started without an archive writes one as it exits
(``-XX:ArchiveClassesAtExit``), holding the classes that run loaded; the
Python process waits for it at exit and then puts it in place, so only a
whole archive is ever used. That makes the first run 10 to 20 s longer.

An archive belongs to one JVM build, one set of jars and one set of driver
options; its file name is a hash of them, so changing any of them makes a new
one. The name also carries the pyspark and delta-spark versions: a virtual
environment holds one of each, so when a new archive is written there, those
of other versions can never be mapped again and are removed. A JVM that finds
that an archive does not match its classpath runs without it (and says so in
the JVM log). The archive is kept in the virtual environment, as Python keeps
its bytecode caches, not in the home directory or the data root. One process
at a time writes it; a process that starts meanwhile goes without. If a JVM
that exits normally writes no archive, a ``.failed`` file beside it says so,
and no later start tries again until that file is removed.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import IO

import pyspark
from pyspark import SparkContext

from lakeward.config import Settings, SparkSettings

log = logging.getLogger(__name__)

EXIT_TIMEOUT_S = 600
# Spark conf that changes the driver's classpath or JVM options.
CLASSPATH_CONF = (
    "spark.jars", "spark.jars.packages", "spark.driver.extraClassPath", "spark.driver.extraJavaOptions",
)


def java_options(settings: Settings) -> list[str]:
    """The JVM options that map the archive, or that write it at exit when there is none yet; or ``[]``."""
    archive = archive_path(settings)
    if archive is None:
        return []
    if archive.is_file():
        return [f"-XX:SharedArchiveFile={archive}"]
    partial = _claim(archive)
    if partial is None:
        return []
    # Derby generates classes too old to archive at run time, and the JVM warns of each one.
    return [f"-XX:ArchiveClassesAtExit={partial}", "-Xlog:cds=error"]


def archive_path(settings: Settings) -> Path | None:
    """Where this installation keeps the archive for these settings; None if it keeps none."""
    spark = settings.spark
    if not spark.class_data_sharing:
        return None
    if spark.class_data_dir is not None:
        directory = spark.class_data_dir.resolve()
    elif (venv := _environment_directory()) is not None:
        directory = venv
    else:
        return None  # no virtual environment: nowhere of the installation's own to write
    return directory / f"{_release_prefix()}{archive_key(spark)}.jsa"


def _release_prefix() -> str:
    """The start of the names of archives for the installed pyspark and delta-spark."""
    return f"driver-spark{metadata.version('pyspark')}-delta{metadata.version('delta-spark')}-"


def archive_key(spark: SparkSettings) -> str:
    """A hash of what an archive must match beyond the release in its name.

    That is the JVM, Spark's jars, the driver options and the classpath conf.
    The pyspark and delta-spark versions, and with them the Delta artifact,
    are in the name already.
    """
    jars = Path(pyspark.__file__).parent / "jars"
    parts = [
        _java_identity(),
        str(jars),
        *sorted(path.name for path in jars.glob("*.jar")),
        *spark.driver_java_options,
        *[f"{key}={spark.conf.get(key, '')}" for key in CLASSPATH_CONF],
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _environment_directory() -> Path | None:
    """The virtual environment's own directory for archives; None outside a virtual environment."""
    return Path(sys.prefix) / "var" / "lakeward" if sys.prefix != sys.base_prefix else None


def _remove_other_releases(directory: Path) -> None:
    """Remove the archives, locks and notes of other pyspark or delta-spark versions from ``directory``.

    Only for the virtual environment's own directory: a ``class_data_dir``
    may be shared by environments of different versions.
    """
    current = _release_prefix()
    for path in directory.glob("driver-*"):
        if not path.name.startswith(current):
            log.debug("removing the class archive file of another release: %s", path.name)
            path.unlink(missing_ok=True)


def failure_note(archive: Path) -> Path:
    """The file that says why writing ``archive`` failed; while it exists, no start tries again."""
    return archive.with_suffix(".failed")


def _java_identity() -> str:
    """The java that Spark's launcher runs (``JAVA_HOME``, else the one on PATH), by file and build."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if found is None:
        return "no java"
    java = Path(found).resolve()
    libjvm = java.parent.parent / "lib" / "server" / "libjvm.so"
    return ";".join(
        f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in (java, libjvm) if path.exists()
    )


def _claim(archive: Path) -> Path | None:
    """Take the right to write ``archive`` for this process's JVM: the file it writes, or None."""
    if failure_note(archive).exists():
        return None
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        lock = archive.with_suffix(".lock").open("w")
    except OSError as error:
        log.debug("no JVM class archive in %s: %s", archive.parent, error)
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None  # another process's JVM is writing it
    if archive.is_file():  # written while this process looked
        lock.close()
        return None
    # Left by a process that was killed before it could put its archive in place.
    for stale in archive.parent.glob(f"{archive.name}.*"):
        stale.unlink(missing_ok=True)
    if archive.parent == _environment_directory():
        _remove_other_releases(archive.parent)
    partial = archive.with_name(f"{archive.name}.{os.getpid()}")
    atexit.register(_put_in_place, partial, archive, lock)
    return partial


def _put_in_place(partial: Path, archive: Path, lock: IO[str]) -> None:
    """At exit: stop the JVM, wait while it writes ``partial``, and rename it to ``archive``."""
    try:
        gateway = SparkContext._gateway
        process: subprocess.Popen[bytes] | None = getattr(gateway, "proc", None)
        if process is None:
            return  # the JVM never started
        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
        log.info("writing the JVM class archive for later starts (once): %s", archive)
        if process.stdin is not None:
            process.stdin.close()  # the gateway JVM exits when its stdin closes
        try:
            code = process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            code = None
        if code == 0 and partial.is_file():
            os.replace(partial, archive)
        elif code == 0 or code is None:
            # The JVM ended as it should, or hung, and wrote nothing: it would do so again.
            failure_note(archive).write_text(
                f"the JVM {'exited without writing it' if code == 0 else 'did not exit'}; "
                f"see the data root's logs/spark.log\n", encoding="utf-8",
            )
            log.warning("could not write the JVM class archive; see %s", failure_note(archive))
        # A JVM that failed for some other reason (out of memory, killed) leaves it to the next start.
    finally:
        partial.unlink(missing_ok=True)
        lock.close()
