"""Checks on the columns a public transform is given, before Spark plans anything."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame


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
