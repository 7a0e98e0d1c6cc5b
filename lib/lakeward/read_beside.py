"""Queries on a local data root while another process holds it.

A local data root's catalog is an embedded Derby database that one JVM at a
time can open (:mod:`lakeward.root_lock`), so ``lakeward sql`` started while a
job runs reads the tables without it. Each table a query names is registered,
in a catalog the session keeps in memory (:func:`lakeward.session.get_reader_spark`),
from its directory in the warehouse: ``<schema>.db/<table>``, or ``<table>`` for
the ``default`` schema. Delta gives the query a consistent snapshot of each
table, whatever the job commits meanwhile.

Only queries run this way. A statement that writes or changes the catalog
would bypass the job's lock, and one that creates a table would leave files
the data root's catalog does not know.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from lakeward import tables
from lakeward.config import is_identifier

_NOT_FOUND = "TABLE_OR_VIEW_NOT_FOUND"
_LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."
# Statements that write or change the catalog are one of these...
_STATEMENT_KINDS = (_LOGICAL + "Command", _LOGICAL + "ParsedStatement")
# ...or one of these (writes to files, procedures, and Delta statements that are neither).
_STATEMENT_NAMES = frozenset({"InsertIntoDir", "Call", "RestoreTableStatement", "CloneTableStatement"})
_QUOTED_PART = re.compile(r"`((?:[^`]|``)*)`")


class NotAQueryError(ValueError):
    """A statement other than a query, refused while another process holds the data root."""


def sql(spark: SparkSession, warehouse: Path, query: str) -> DataFrame:
    """``spark.sql(query)``, with each table the query names registered from ``warehouse`` first.

    Raises :class:`NotAQueryError` for a statement that is not a query, and
    Spark's own error for a table the warehouse does not hold.
    """
    check_query(spark, query)
    registered: set[tuple[str, str]] = set()
    while True:
        try:
            return spark.sql(query)
        except AnalysisException as error:
            # Spark names one missing table at a time; register it and plan again.
            name = _missing_table(error)
            if name is None or name in registered:
                raise
            location = table_location(warehouse, *name)
            if location is None:
                raise
            _register(spark, *name, location)
            registered.add(name)


def check_query(spark: SparkSession, query: str) -> None:
    """Refuse ``query`` unless it only reads: no DDL, DML, ``SET`` or ``INSERT``, at any depth."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(query)
    kinds = [jvm.java.lang.Class.forName(kind) for kind in _STATEMENT_KINDS]
    for node in _nodes(plan):
        name = node.getClass().getSimpleName()
        if name in _STATEMENT_NAMES or any(kind.isInstance(node) for kind in kinds):
            raise NotAQueryError(
                f"only queries can run while another process holds the data root, not {name}; "
                "run the statement once that process has finished"
            )


def table_location(warehouse: Path, schema: str, table: str) -> Path | None:
    """Where the warehouse keeps the Delta table ``schema.table``; None if it holds no such table."""
    if not (is_identifier(schema) and is_identifier(table)):
        return None
    location = warehouse / table if schema == "default" else warehouse / f"{schema}.db" / table
    return location if (location / "_delta_log").is_dir() else None


def _nodes(plan: Any) -> Any:
    yield plan
    children = plan.children()
    for i in range(children.size()):
        yield from _nodes(children.apply(i))


def _missing_table(error: AnalysisException) -> tuple[str, str] | None:
    """(schema, table) of the table Spark could not find, lower-cased as the catalog keeps names."""
    if error.getCondition() != _NOT_FOUND:
        return None
    relation = (error.getMessageParameters() or {}).get("relationName", "")
    parts = [part.replace("``", "`").lower() for part in _QUOTED_PART.findall(relation)]
    if len(parts) == 3 and parts[0] == "spark_catalog":
        parts = parts[1:]
    if len(parts) == 1:
        return "default", parts[0]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _register(spark: SparkSession, schema: str, table: str, location: Path) -> None:
    if schema != "default":
        tables.ensure_schema(spark, schema)
    spark.catalog.createTable(f"{schema}.{table}", path=str(location), source="delta")
