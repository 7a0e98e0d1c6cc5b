"""Checks on the columns a public transform is given, before Spark plans anything."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import types as T


class MissingColumnsError(ValueError):
    """A DataFrame passed to a transform lacks a column the transform needs."""


def require(df: DataFrame, expected: Sequence[str], *, what: str) -> None:
    """Raise :class:`MissingColumnsError` naming what ``what`` lacks of ``expected``, and what it has.

    Spark's own error names one unresolved column, deep in a plan; this one
    names every missing column and the call it came from.
    """
    missing = [name for name in expected if name not in df.columns]
    if missing:
        raise MissingColumnsError(
            f"{what} is missing column(s) {missing}: expected {list(expected)}; it has {df.columns}"
        )


def equatable(data_type: T.DataType) -> bool:
    """Whether Spark compares and hashes values of this type (no map or variant inside)."""
    if isinstance(data_type, T.StructType):
        return all(equatable(f.dataType) for f in data_type.fields)
    if isinstance(data_type, T.ArrayType):
        return equatable(data_type.elementType)
    return not isinstance(data_type, T.MapType | T.VariantType)


def not_a_time(df: DataFrame, column: str, *, arg: str, what: str) -> str | None:
    """What is wrong with ``column`` of ``df`` as a time (``arg`` names it), or None for a time.

    A timestamp, with or without time zone, or a date: given text, Spark would
    parse it silently, and fail at the first value that is not one.
    """
    found = df.schema[column].dataType
    if isinstance(found, T.TimestampType | T.TimestampNTZType | T.DateType):
        return None
    return f"{arg}={column!r} in {what} must be a timestamp or date column; it is {found.simpleString()}"
