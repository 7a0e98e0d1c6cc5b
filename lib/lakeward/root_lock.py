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
import os
from pathlib import Path

from lakeward.config import Settings

LOCK_NAME = "lakeward.lock"

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
    outsider = _derby_holder(settings.metastore_dir / "metastore_db")
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


def _derby_holder(database: Path) -> str | None:
    """The pid of a process that has this Derby database open, else None.

    Derby holds a POSIX lock on ``dbex.lck`` while a JVM has the database open;
    a Spark session started outside lakeward takes no lakeward lock, so its
    catalog would otherwise meet the next command's as Hive's "Unable to
    instantiate SessionHiveMetaStoreClient", after Spark's start.
    """
    try:
        fd = os.open(database / "dbex.lck", os.O_RDWR)
    except OSError:  # no database yet, or none open
        return None
    try:
        # A POSIX lock, as Derby's (Java's FileChannel.tryLock); released by the close below.
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return _lock_owner(database / "dbex.lck") or "unknown"
    finally:
        os.close(fd)
    return None


def _lock_owner(path: Path) -> str | None:
    """The pid /proc/locks gives for a lock on ``path`` (Linux), else None."""
    try:
        inode = path.stat().st_ino
        with open("/proc/locks", encoding="ascii") as locks:
            for line in locks:
                fields = line.split()
                # 1: POSIX  ADVISORY  WRITE 20181 fe:00:10003218 0 EOF
                if len(fields) > 5 and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return fields[4]
    except OSError:
        return None
    return None
