"""One process at a time on a local data root.

A local data root's catalog is an embedded Derby database, which one JVM at a
time can open. Without this lock a second process would start Spark and then
fail at its first table access with Hive's "Unable to instantiate
SessionHiveMetaStoreClient"; with it, that process stops before opening the
catalog (before starting Spark, unless spark-submit started it) and says which
process holds the data root. The operating system releases the
lock when its holder exits, however it exits, so a crash leaves nothing to
clean up.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import sys
import time
from pathlib import Path

from lakeward.config import Settings

LOCK_NAME = "lakeward.lock"
# Seconds the JVM of a lakeward command that just ended may take to close the catalog.
DERBY_RELEASE_WAIT = 20.0

log = logging.getLogger(__name__)

# Open for the life of the process: closing the descriptor releases the lock.
_held: dict[Path, int] = {}


class DataRootBusy(RuntimeError):
    """Another process is using the data root's local catalog; ``holder`` is its pid as recorded."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


def hold(settings: Settings) -> None:
    """Hold the lock of the settings' data root (beside its catalog) for the life of this process.

    Raises :class:`DataRootBusy` at once, without waiting, when another process holds it.
    Outside ``local`` mode there is no local catalog, and nothing to hold.
    """
    if settings.spark.mode != "local":
        return
    path = (settings.metastore_dir / LOCK_NAME).resolve()
    if path in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise DataRootBusy(
            f"another process (pid {holder}) is using the data root {settings.data_root}: its local "
            f"catalog (Derby) serves one process at a time. Wait for that process to finish, or set "
            f"LAKEWARD_HOME to another data root",
            holder,
        ) from None
    except BaseException:
        os.close(fd)
        raise
    outsider = _derby_released(settings.metastore_dir / "metastore_db")
    if outsider is not None:
        os.close(fd)
        raise DataRootBusy(
            f"another process (pid {outsider}), not a lakeward command, has the catalog of the data "
            f"root {settings.data_root} open (a Spark session of its own on metastore/metastore_db): "
            f"Derby serves one process at a time. Stop that session, or have it read the tables "
            f"by path (README, \"Your own Spark session\")",
            outsider,
        )
    # The pid only: a command line can hold a query with personal data in it.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held[path] = fd


def _derby_released(database: Path) -> str | None:
    """None once no process has this Derby database open; else, after ``wait`` seconds, its pid.

    Derby holds a POSIX lock on ``dbex.lck`` while a JVM has the database open.
    A Spark session started outside lakeward takes no lakeward lock, so its
    catalog would otherwise meet the next command's as Hive's "Unable to
    instantiate SessionHiveMetaStoreClient", after Spark's start. The JVM of a
    lakeward command that just ended holds it too, for the moment it takes to
    stop after its Python process: hence the wait.
    """
    started = time.monotonic()
    said = False
    while True:
        holder = _derby_holder(database / "dbex.lck")
        waited = time.monotonic() - started
        if holder is None or waited >= DERBY_RELEASE_WAIT:
            return holder
        if not said and waited >= 2:
            log.info("waiting for process %s to close the catalog (Derby) of the data root", holder)
            said = True
        time.sleep(0.1)


def _derby_holder(lock_file: Path) -> str | None:
    """The pid of a process that holds a lock on ``lock_file``, without taking one; else None."""
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:  # no database yet
        return None
    try:
        if sys.platform == "linux":
            # F_GETLK asks without locking, and names the holder. struct flock on Linux:
            # l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t), padded to 32 bytes.
            asked = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            l_type, _, _, _, l_pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, asked))
            return None if l_type == fcntl.F_UNLCK else str(l_pid)
        try:
            # Elsewhere, a lock taken and released at once (Derby's is a POSIX lock too).
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return "unknown"
        return None
    finally:
        os.close(fd)
