"""A Delta table's latest version, id, properties, rows and last commit, read from its log on the driver.

``DESCRIBE HISTORY`` and ``DESCRIBE DETAIL`` each start a Spark job, about
0.25 s on a warm local driver, and a gold run asks for eight such facts. The
open-source Delta classes the session runs answer the same from the snapshot
they keep in memory, in a few milliseconds and without a job
(docs/BENCHMARKS.md, "Test suite"). Where those classes are not at hand
(Spark Connect; Databricks, whose Delta lives under other class names) or the
name is not a Delta table, these functions return None and the caller asks
Delta's SQL API instead, which also raises the errors a user should see::

    facts = delta_log.snapshot(spark, "silver.orders")
    version = facts.version if facts else <DESCRIBE HISTORY>
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession


@dataclass(frozen=True)
class Snapshot:
    """The table's latest version, Delta's id of the table and its properties."""

    version: int
    table_id: str
    properties: dict[str, str]


@dataclass(frozen=True)
class Commit:
    """A commit's version, its ``userMetadata`` and its operation metrics, as its history entry has them."""

    version: int
    user_metadata: str | None
    operation_metrics: dict[str, str]


def snapshot(spark: SparkSession, name: str) -> Snapshot | None:
    """The table's latest snapshot; None where the log cannot be read this way."""
    found = _latest(spark, name)
    if found is None:
        return None
    jvm, _, latest = found
    metadata = latest.metadata()
    return Snapshot(int(latest.version()), str(metadata.id()), _as_dict(jvm, metadata.configuration()))


def row_count(spark: SparkSession, name: str) -> int | None:
    """The rows the table holds, summed from its files' statistics; None where they are not at hand.

    Delta keeps every file's entry in the version's checksum file while the
    table has few files (``spark.databricks.delta.allFilesInCrc.*``), each
    with its row count net of deleted rows. A larger table, or a file
    written without statistics, gives None.
    """
    found = _latest(spark, name)
    if found is None:
        return None
    _, _, latest = found
    try:
        checksum = latest.checksumOpt()
        if not checksum.isDefined() or not checksum.get().allFiles().isDefined():
            return None
        files = checksum.get().allFiles().get()
        total = 0
        for i in range(files.size()):
            rows = files.apply(i).numLogicalRecords()
            if not rows.isDefined():
                return None
            total += int(rows.get())
    except (Py4JError, PySparkException):
        return None
    return total


def last_commit(spark: SparkSession, name: str) -> Commit | None:
    """The table's latest commit; None where the log cannot be read this way."""
    found = _latest(spark, name)
    if found is None:
        return None
    jvm, log, latest = found
    version = int(latest.version())
    try:
        changes = log.getChanges(version, jvm.scala.Option.empty(), False)
        if not changes.hasNext():
            return None
        first = changes.next()
        if int(first._1()) != version:
            return None
        actions = first._2()
        for i in range(actions.size()):
            action = actions.apply(i)
            if action.getClass().getSimpleName() == "CommitInfo":
                note, metrics = action.userMetadata(), action.operationMetrics()
                return Commit(
                    version,
                    str(note.get()) if note.isDefined() else None,
                    _as_dict(jvm, metrics.get()) if metrics.isDefined() else {},
                )
    except (Py4JError, PySparkException):
        return None
    return None


@dataclass(frozen=True)
class Change:
    """One commit after a given version: who wrote it, and whether it changed the table's rows."""

    version: int
    operation: str
    user_metadata: str | None
    changes_rows: bool
    """Some file it added or removed has ``dataChange`` set (OPTIMIZE and VACUUM have none)."""
    changes_definition: bool = False
    """It holds a ``metaData`` action: the table's schema or properties changed (``ALTER TABLE``)."""


_FILE_ACTIONS = ("AddFile", "RemoveFile", "AddCDCFile")


def commits_after(spark: SparkSession, name: str, version: int) -> list[Change] | None:
    """The table's commits after ``version``, oldest first; None where the log cannot be read this way."""
    found = _latest(spark, name)
    if found is None:
        return None
    jvm, log, latest = found
    changes: list[Change] = []
    if int(latest.version()) <= version:
        return changes
    try:
        commits = log.getChanges(version + 1, jvm.scala.Option.empty(), False)
        while commits.hasNext():
            entry = commits.next()
            actions = entry._2().iterator()
            info, rows, definition = None, False, False
            # Stops at the first file action that changes rows once the commit's
            # info is seen (Delta writes it first): only a commit that changes no
            # rows, such as OPTIMIZE or ALTER TABLE, is read to its end.
            while actions.hasNext() and not (info is not None and rows):
                action = actions.next()
                kind = action.getClass().getSimpleName()
                if kind == "CommitInfo":
                    info = action
                elif kind == "Metadata":
                    definition = True
                elif kind in _FILE_ACTIONS and not rows:
                    rows = bool(action.dataChange())
            note = info.userMetadata() if info is not None else None
            changes.append(Change(
                int(entry._1()),
                str(info.operation()) if info is not None else "",
                str(note.get()) if note is not None and note.isDefined() else None,
                rows,
                definition,
            ))
    except (Py4JError, PySparkException):
        return None
    return changes


def _latest(spark: SparkSession, name: str) -> tuple[Any, Any, Any] | None:
    """(the JVM view, the table's ``DeltaLog``, its latest ``Snapshot``), or None."""
    try:
        jvm = spark._jvm  # type: ignore[attr-defined]
        if jvm is None:
            return None
        session = spark._jsparkSession  # type: ignore[attr-defined]
        identifier = session.sessionState().sqlParser().parseTableIdentifier(name)
        log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(session, identifier)
        latest = log.update(False, jvm.scala.Option.empty(), jvm.scala.Option.empty())
    except (AttributeError, Py4JError, PySparkException):
        # PySpark turns most JVM errors into its own, such as a missing table's.
        return None
    # A version below 0 is a location without a Delta log.
    return (jvm, log, latest) if int(latest.version()) >= 0 else None


def _as_dict(jvm: Any, scala_map: Any) -> dict[str, str]:
    converted = jvm.scala.jdk.javaapi.CollectionConverters.asJava(scala_map)
    return {str(key): str(value) for key, value in dict(converted).items()}
