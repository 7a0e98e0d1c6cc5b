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

import errno
import fcntl
import logging
import os
import struct
import sys
import time
from pathlib import Path

from lakeward.config import HOME_VAR, ConfigError, Settings

LOCK_NAME = "lakeward.lock"
# Seconds the JVM of the lakeward command before may take to close the catalog: its
# shutdown (Spark's hooks, Derby) takes seconds, and tens of them on a loaded machine.
DERBY_RELEASE_WAIT = 60.0

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

    Raises :class:`DataRootBusy` at once, without waiting, when another process holds it,
    or when another program's Spark session has its catalog open.
    Outside ``local`` mode there is no local catalog, and nothing to hold.
    """
    if settings.spark.mode != "local":
        return
    path = (settings.metastore_dir / LOCK_NAME).resolve()
    if path in _held:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if not isinstance(err, PermissionError) and err.errno != errno.EROFS:
            raise
        # Read-only, or not the user's: nothing can be written there.
        raise ConfigError(
            f"cannot write in the data root {settings.data_root} ({err.strerror}: {err.filename}); "
            f"set {HOME_VAR} (or data_root) to a directory you can write in"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _recorded(fd)[0] or "unknown"
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
    try:
        previous_jvm = _recorded(fd)[1]
        _record(fd, str(os.getpid()))
        outsider = _derby_released(settings.metastore_dir / "metastore_db", previous_jvm)
    except BaseException:
        os.close(fd)
        raise
    if outsider is not None:
        os.close(fd)
        raise DataRootBusy(
            f"another process (pid {outsider}), not a lakeward command, has the catalog of the data "
            f"root {settings.data_root} open (a Spark session of its own on metastore/metastore_db): "
            f"Derby serves one process at a time. Stop that session, or have it read the tables "
            f"by path (README, \"Your own Spark session\")",
            outsider,
        )
    _held[path] = fd


def holds_a_data_root() -> bool:
    """Whether this process holds a local data root's lock: no other process then uses its catalog."""
    return bool(_held)


def note_jvm(settings: Settings, jvm_pid: int) -> None:
    """Record, beside this process's pid, the pid of the JVM that opens the catalog for it.

    The next command waits for that JVM to close the catalog: it may still be
    stopping after this process has ended.
    """
    fd = _held.get((settings.metastore_dir / LOCK_NAME).resolve())
    if fd is not None:
        _record(fd, f"{os.getpid()}\n{jvm_pid}")


def _recorded(fd: int) -> tuple[str | None, str | None]:
    """The pid of the process and the pid of its JVM that the lock file records."""
    lines = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    return (lines[0] if lines else None), (lines[1] if len(lines) > 1 else None)


def _record(fd: int, text: str) -> None:
    # Pids only: a command line can hold a query with personal data in it.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{text}\n".encode("ascii"), 0)


def _derby_released(database: Path, previous_jvm: str | None) -> str | None:
    """None once no process has this Derby database open; else the pid of the one that has.

    Derby holds a POSIX lock on ``dbex.lck`` while a JVM has the database open.
    A Spark session started outside lakeward takes no lakeward lock, so its
    catalog would otherwise meet the next command's as Hive's "Unable to
    instantiate SessionHiveMetaStoreClient", after Spark's start. The JVM of
    the lakeward command before (``previous_jvm``) may hold it a moment
    longer than its Python process lived: that one is waited for, up to
    :data:`DERBY_RELEASE_WAIT` seconds.
    """
    started = time.monotonic()
    said = False
    while True:
        holder = _derby_holder(database / "dbex.lck")
        waited = time.monotonic() - started
        if holder is None or holder != previous_jvm or waited >= DERBY_RELEASE_WAIT:
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
            if l_type == fcntl.F_UNLCK:
                return None
            return str(l_pid) if l_pid > 0 else "unknown"  # 0: a process of another pid namespace
        try:
            # Elsewhere, a lock taken and released at once (Derby's is a POSIX lock too).
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return "unknown"
        return None
    finally:
        os.close(fd)
