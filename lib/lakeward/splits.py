"""Leakage-safe splits: temporal (with a gap of the label horizon) and by group.

train, validation, test = "train", "validation", "test"
by_time = temporal_split(labels, ts="label_ts", t1=t1, t2=t2, gap=timedelta(days=30))
problems = leakage(by_time, ts="label_ts", horizon=timedelta(days=30), t1=t1, t2=t2)
by_user = group_split(labels, key="user_key", fractions=(0.7, 0.15, 0.15), seed=7)
problems = leakage(by_user, key="user_key")  # a group split mixes times: check its groups

A bound without a time zone is UTC; a date is midnight in the session's time zone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakeward import columns

PARTS = ("train", "validation", "test")
SPLIT = "split"


class LeakageError(RuntimeError):
    """A split lets information cross from one part into another."""


def temporal_split(
    labels: DataFrame, *, ts: str, t1: datetime, t2: datetime, gap: timedelta
) -> DataFrame:
    """Add ``split``: train before ``t1``, validation in ``[t1, t2)``, test from ``t2``.

    ``gap`` is the label horizon: the length of each label's window ``(ts, ts + gap]``.
    A train or validation label whose window would reach the next part's
    start is dropped, so no label window crosses a boundary. A gap shorter
    than the labels' real horizon lets windows cross unseen; check the result
    with :func:`leakage` and the real horizon. Labels with a null ``ts``
    belong to no part and are dropped too. Bounds that leave validation empty
    (``t2 - t1`` not longer than ``gap``) are refused.
    """
    check_bounds(t1, t2, gap)
    (ts,) = columns.resolve(labels, (ts,), what="labels")
    columns.require_time(labels, ts, arg="ts", what="labels")
    fits = _fits(columns.ref(ts), t1, t2, gap)
    part = F.when(fits["train"], F.lit("train"))
    for name in PARTS[1:]:
        part = part.when(fits[name], F.lit(name))
    return labels.withColumn(SPLIT, part).filter(F.col(SPLIT).isNotNull())


def _fits(at: Column, t1: date, t2: date, gap: timedelta) -> dict[str, Column]:
    """Per part, whether a label at ``at`` belongs to it: its window ends before the next part."""
    start, end = (columns.instant_micros(columns.time_bound(bound)) for bound in (t1, t2))
    at_micros, reach = columns.instant_micros(at), columns.after(at, gap)
    return {
        "train": reach < start,
        "validation": (at_micros >= start) & (reach < end),
        "test": at_micros >= end,
    }


def check_bounds(t1: date, t2: date, gap: timedelta) -> None:
    """Refuse bounds that give no leak-free :func:`temporal_split` with a validation part."""
    columns.require_timedelta("gap", gap)
    for name, bound in (("t1", t1), ("t2", t2)):
        if not isinstance(bound, date):
            raise TypeError(f"{name} must be a datetime or a date, got {type(bound).__name__} {bound!r}")
    if _aware(t1) != _aware(t2):
        raise ValueError(f"t1 and t2 must both have a time zone or both have none, got {t1} and {t2}")
    start, end = _as_datetime(t1), _as_datetime(t2)
    if not start < end:
        raise ValueError(f"expected t1 < t2, got {t1} and {t2}")
    if end - start <= gap:
        raise ValueError(
            f"t2 - t1 ({end - start}) must be longer than the gap ({gap}): "
            "no validation label's window would end before t2"
        )


def _aware(bound: date) -> bool:
    return isinstance(bound, datetime) and bound.tzinfo is not None


def _as_datetime(bound: date) -> datetime:
    return bound if isinstance(bound, datetime) else datetime.combine(bound, datetime.min.time())


def check_fractions(fractions: Sequence[float]) -> None:
    """Refuse shares of train, validation and test that are not three non-negative numbers summing to 1."""
    if (
        len(fractions) != len(PARTS)
        # NaN passes every comparison below: refused first.
        or not all(isinstance(f, numbers.Real) and math.isfinite(f) for f in fractions)
        or any(f < 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-9
    ):
        raise ValueError(f"expected three non-negative fractions summing to 1, got {tuple(fractions)}")


def group_split(
    labels: DataFrame, *, key: str, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> DataFrame:
    """Add ``split`` by a seeded hash of ``key``: every group lands in exactly one part."""
    check_fractions(fractions)
    (key,) = columns.resolve(labels, (key,), what="labels")
    found = labels.schema[key].dataType
    if not columns.equatable(found):
        raise TypeError(f"key={key!r} is {found.simpleString()}; a group key of a map or variant "
                        "type cannot be hashed: use another column")
    buckets = 1_000_000
    position = F.pmod(F.xxhash64(F.lit(seed), columns.ref(key)), F.lit(buckets)) / buckets
    train_end, validation_end = fractions[0], fractions[0] + fractions[1]
    part = (
        F.when(position < train_end, F.lit("train"))
        .when(position < validation_end, F.lit("validation"))
        .otherwise(F.lit("test"))
    )
    return labels.withColumn(SPLIT, part)


def leakage(
    split: DataFrame,
    *,
    key: str | None = None,
    ts: str | None = None,
    horizon: timedelta | None = None,
    t1: date | None = None,
    t2: date | None = None,
) -> list[str]:
    """Describe every leak between parts; an empty list means none was found.

    With ``key``: a group that appears in more than one part. With ``ts`` and
    ``horizon`` (both or neither; ``timedelta(0)`` checks only the order of the
    label times): a label window of an earlier part that reaches the first
    label of a later part. Neighbouring non-empty parts are compared; that
    covers every pair, because each part's first label is before its windows end.
    With the bounds of a temporal split as well (``t1`` and ``t2``): a label
    outside its part's time range, or whose window reaches the next part's
    start, as :func:`temporal_split` would not have put it (a label without a
    time included), even where no label of the next part is that early.
    Always: a row whose split is none of the parts (or null), which no check clears.
    Neither ``key`` nor ``ts`` is refused: a check of nothing would pass any split.
    """
    if (ts is None) != (horizon is None):
        raise ValueError(
            "give ts and horizon together: without the horizon a label window that crosses into "
            "the next part goes unseen"
        )
    if key is None and ts is None:
        raise ValueError(
            "nothing to check: give key (a group split), or ts and horizon (a temporal "
            "split), or all three"
        )
    if (t1 is None) != (t2 is None) or (t1 is not None and ts is None):
        raise ValueError("give t1 and t2 together, and with ts and horizon")
    if horizon is not None:
        columns.require_timedelta("horizon", horizon)
    names = [SPLIT, *(name for name in (key, ts) if name is not None)]
    spelt = dict(zip(names, columns.resolve(split, names, what="split"), strict=True))
    part_column = spelt[SPLIT]
    split_value = columns.ref(part_column)
    key = None if key is None else spelt[key]
    ts = None if ts is None else spelt[ts]
    if ts is not None:
        columns.require_time(split, ts, arg="ts", what="split")
    problems: list[str] = []
    if key is not None:
        parts = F.countDistinct(split_value).alias("_parts")
        shared = split.groupBy(columns.ref(key)).agg(parts).filter(F.col("_parts") > 1).count()
        if shared:
            problems.append(f"{shared} value(s) of {key} appear in more than one part")
    # One row per split value; with ``ts``, its first label and how far its windows reach.
    per_part = [F.count(F.lit(1)).alias("rows")]
    if ts is not None:
        # As instants in microseconds: compared in Python, datetimes would be the Python
        # process's wall clock, which repeats an hour when the clocks go back.
        assert horizon is not None  # checked above
        at = columns.ref(ts)
        per_part += [F.min(columns.instant_micros(at)).alias("first"),
                     F.max(columns.after(at, horizon)).alias("last_reach")]
        if t1 is not None and t2 is not None:
            check_bounds(t1, t2, horizon)
            # A row fits when it is in a part whose rule holds; a null time fits none.
            rules = _fits(at, t1, t2, horizon).items()
            fitting = reduce(Column.__or__, [(split_value == F.lit(name)) & rule for name, rule in rules])
            per_part.append(F.count_if(~F.coalesce(fitting, F.lit(False))).alias("outside"))
    rows = split.groupBy(split_value).agg(*per_part).collect()
    unknown = sorted(repr(row[part_column]) for row in rows if row[part_column] not in PARTS)
    if unknown:
        problems.append(f"{SPLIT} value(s) {', '.join(unknown)} are not one of {', '.join(PARTS)}")
    if t1 is not None:
        ranges = {"train": f"windows ending before t1={t1}",
                  "validation": f"times from t1={t1} and windows ending before t2={t2}",
                  "test": f"times from t2={t2}"}
        outside = {row[part_column]: row["outside"] for row in rows}
        problems.extend(
            f"{outside[part]} {part} label(s) outside the part's range ({ranges[part]})"
            for part in PARTS if outside.get(part)
        )
    if ts is not None:
        bounds = {row[part_column]: (row["first"], row["last_reach"]) for row in rows}
        # A part whose labels all lack a time has no window and no first label.
        present = [p for p in PARTS if p in bounds and bounds[p][0] is not None]
        for earlier, later in zip(present, present[1:], strict=False):
            if bounds[earlier][1] >= bounds[later][0]:
                problems.append(
                    f"{earlier} label windows reach {_shown(bounds[earlier][1])}, "
                    f"not before the first {later} label at {_shown(bounds[later][0])}"
                )
    return problems


def _shown(micros: int) -> str:
    return f"{columns.from_micros(micros):%Y-%m-%d %H:%M:%S.%f}".removesuffix(".000000") + " UTC"


def assert_no_leakage(split: DataFrame, **checks: object) -> None:
    """Raise :class:`LeakageError` listing every leak :func:`leakage` finds."""
    problems = leakage(split, **checks)  # type: ignore[arg-type]
    if problems:
        raise LeakageError("; ".join(problems))
