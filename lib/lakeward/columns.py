"""Checks on the columns a public transform is given, before Spark plans anything, and its time bounds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T


class MissingColumnsError(ValueError):
    """A DataFrame passed to a transform lacks a column the transform needs."""


def ref(name: str, of: str | None = None) -> Column:
    """Refer to a column by its exact name, even with dots or backticks in it; ``of``: the alias it is of."""
    quoted = "`" + name.replace("`", "``") + "`"
    return F.col(f"{of}.{quoted}" if of else quoted)


def case_sensitive(df: DataFrame) -> bool:
    """Whether ``df``'s session resolves column names by exact case (``spark.sql.caseSensitive``)."""
    # Spark reads a boolean setting case-blind and trimmed ("TRUE", " true").
    return str(df.sparkSession.conf.get("spark.sql.caseSensitive", "false")).strip().lower() == "true"


def resolve(
    df: DataFrame,
    expected: Sequence[str],
    *,
    what: str,
    expecting: str | None = None,
    error: type[Exception] = MissingColumnsError,
) -> list[str]:
    """Each name of ``expected`` as ``df`` spells it, or ``error`` naming what is missing.

    A name resolves to the column of that name or, unless the session is case
    sensitive, to the one column equal to it but for case, as Spark resolves
    names; several such columns are ambiguous to Spark, one of them spelt as
    given included. Spark's own error names one unresolved column, deep in a plan;
    this one names every missing column, what ``what`` was expected to have
    (``expecting``; by default the list of names) and what it has.
    """
    blind = not case_sensitive(df)
    resolved, missing = [], []
    for name in expected:
        # Distinct spellings: a name repeated exactly is the caller's to report.
        spelt = list(dict.fromkeys(c for c in df.columns if c.lower() == name.lower())) if blind else []
        if len(spelt) > 1:
            # Spark finds them ambiguous, even when one is spelt as given.
            raise error(
                f"{what} has several columns that {name!r} names, differing only in case, {spelt}: "
                "Spark cannot tell them apart unless spark.sql.caseSensitive is on; rename all but one"
            )
        if name in df.columns:
            resolved.append(name)
        elif spelt:
            resolved.append(spelt[0])
        else:
            missing.append(name)
    if missing:
        raise error(
            f"{what} is missing column(s) {missing}: expected {expecting or list(expected)}; "
            f"{what} has columns {df.columns}"
        )
    return resolved


def equatable(data_type: T.DataType) -> bool:
    """Whether Spark compares and hashes values of this type (no map or variant inside)."""
    if isinstance(data_type, T.StructType):
        return all(equatable(f.dataType) for f in data_type.fields)
    if isinstance(data_type, T.ArrayType):
        return equatable(data_type.elementType)
    return not isinstance(data_type, T.MapType | T.VariantType)


def require_time(
    df: DataFrame, column: str, *, arg: str, what: str, error: type[Exception] = TypeError
) -> None:
    """Raise ``error`` unless ``column`` of ``df`` (given as ``arg``) is a time.

    A timestamp, with or without time zone, or a date: given text, Spark would
    parse it silently, and fail at the first value that is not one.
    """
    found = df.schema[column].dataType
    if not isinstance(found, T.TimestampType | T.TimestampNTZType | T.DateType):
        raise error(
            f"{arg}={column!r} in {what} must be a timestamp or date column; it is {found.simpleString()}"
        )


def time_bound(value: date) -> Column:
    """A bound given as a datetime or a date, as a literal; a datetime without a time zone is UTC.

    PySpark reads a naive datetime in the Python process's time zone (``TZ``), not the
    session's, so the same call would cut at another instant on a machine set to
    another zone. lakeward's days are UTC days, and ``training_set`` reads naive
    bounds as UTC too. A date stays a date: Spark compares it as midnight in the
    session's time zone (UTC in every session lakeward builds).
    """
    return F.lit(utc(value) if isinstance(value, datetime) else value)


def instant_micros(at: Column) -> Column:
    """Microseconds since the epoch of the instant ``at`` is, so that a duration adds exactly.

    Spark adds an interval to a timestamp on the session time zone's calendar: across a
    daylight-saving change, 30 days is 719 or 721 hours, while a label's window and a
    ttl are exact durations. A date, or a time without zone, is taken in the session
    time zone, as Spark takes it when it compares one with a timestamp.
    """
    return F.unix_micros(at.cast(T.TimestampType()))


def micros(span: timedelta) -> int:
    """``span`` in microseconds, the unit a ``timedelta`` holds exactly."""
    return span // timedelta(microseconds=1)


def after(at: Column, span: timedelta) -> Column:
    """:func:`instant_micros` of ``at`` plus ``span``, exactly."""
    return instant_micros(at) + F.lit(micros(span))


def from_micros(micros: int) -> datetime:
    """The UTC time ``micros`` microseconds after the epoch, as :func:`instant_micros` counts."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def utc(value: date) -> datetime:
    """``value`` as an aware UTC datetime: one without a time zone is UTC, a date its midnight in UTC."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def require_timedelta(name: str, value: object, *, positive: bool = False) -> timedelta:
    """``value`` if it is a ``timedelta`` that is not negative (above zero when ``positive``)."""
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a datetime.timedelta, got {type(value).__name__} {value!r}")
    if positive and value <= timedelta(0):
        raise ValueError(f"{name} must be positive, got {value}")
    if value < timedelta(0):
        raise ValueError(f"{name} must not be negative, got {value}")
    return value
