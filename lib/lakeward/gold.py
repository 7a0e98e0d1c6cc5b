"""Gold: per-user daily aggregates and as-known-at rolling features (pure transforms).

``gold.user_daily`` aggregates silver by user and event date.

``gold.user_features`` has one row per user and day ``feature_date`` from the
user's first known event to the as-of date. A row holds what was *known* at
the end of that day: an event counts from the day it arrived, never earlier,
so a late event for day d arriving on d+3 first shows in the row of d+3 while
the rows of d..d+2 stay as they were. ``feature_ts`` is the end of
``feature_date``, its last microsecond (UTC): the values hold every event known
that day, so they are known when the day ends, and on that day.

Rolling windows are computed without a range join: an event with event date
``e`` that became known on day ``k`` is inside the w-day window of day ``A``
exactly for ``A`` in ``[k, e + w - 1]``, so it adds +value on day ``k`` and
-value on day ``e + w``; a running sum over each user's days gives every
window at once (one shuffle by user).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import session, tables
from lakeward.config import Settings

# How this code computes gold's values, apart from the settings (feature_version, windows).
# Raised with every change to it, so that the first run of a new lakeward on an old data root
# recomputes gold instead of adding rows of the new definition to those of the old one.
# 2: feature_ts at the end of feature_date; a rating without a rating and a delivery
# without both times counted in no rating or lateness (2026-11-30).
DEFINITION_REVISION = 2

COUNT = T.LongType()
MONEY = T.DecimalType(22, 2)


def user_daily_spec(settings: Settings) -> tables.TableSpec:
    """``gold.user_daily``: per user_key and event date."""
    schema = T.StructType(
        [
            T.StructField("user_key", T.StringType()),
            T.StructField("event_date", T.DateType()),
            T.StructField("orders", COUNT),
            T.StructField("spend", MONEY),
            T.StructField("deliveries", COUNT),
            T.StructField("late_deliveries", COUNT),
            T.StructField("rating_count", COUNT),
            T.StructField("rating_sum", COUNT),
            T.StructField("mean_rating", T.DoubleType()),
        ]
    )
    # Partitioned by date: an increment replaces whole event dates, which is
    # then a change to the log only, with no data file read or rewritten.
    return tables.TableSpec(
        settings.table("gold_user_daily"), schema, subject_column="user_key",
        partition_columns=("event_date",), stats_columns=("user_key",),
    )


# The late-delivery count has its own window; an increment reads the deliveries it spans.
LATE_DELIVERY_DAYS = 30
LATE_DELIVERIES = f"late_deliveries_{LATE_DELIVERY_DAYS}d"


def window_columns(windows: Sequence[int]) -> list[str]:
    """The per-window count and spend columns, in table order."""
    return [name for days in windows for name in (f"orders_{days}d", f"spend_{days}d")]


def feature_columns(windows: Sequence[int]) -> list[T.StructField]:
    """The feature value columns for the configured windows."""
    fields = [T.StructField(name, COUNT if name.startswith("orders") else MONEY)
              for name in window_columns(windows)]
    return fields + [
        T.StructField(LATE_DELIVERIES, COUNT),
        T.StructField("days_since_last_order", T.IntegerType()),
        T.StructField("rating_count", COUNT),
        T.StructField("mean_rating", T.DoubleType()),
    ]


def user_features_spec(settings: Settings) -> tables.TableSpec:
    """``gold.user_features``: as-known-at daily feature history."""
    schema = T.StructType(
        [
            T.StructField("user_key", T.StringType()),
            T.StructField("feature_date", T.DateType()),
            T.StructField("feature_ts", T.TimestampType()),
            *feature_columns(settings.pipeline.feature_windows_days),
            T.StructField("feature_version", T.StringType()),
        ]
    )
    # Statistics on the value columns would cost a sixth of each write
    # (benchmarks/write_stats.py) and skip nothing: readers filter by user and time.
    return tables.TableSpec(
        settings.table("gold_user_features"), schema, subject_column="user_key",
        stats_columns=("user_key", "feature_date", "feature_ts"),
    )


# --- pure transforms -------------------------------------------------------------------


def known_day() -> Column:
    """The day an event became known: once it has arrived, and never before it happened."""
    return F.greatest(F.col("event_date"), F.col("_arrival_date"))


def user_daily(orders: DataFrame, deliveries: DataFrame, ratings: DataFrame) -> DataFrame:
    """Per user_key and event_date: orders, spend, deliveries, late ones, ratings."""
    zero, none = F.lit(0).cast(COUNT), F.lit(None).cast(MONEY)
    parts = [
        orders.select("user_key", "event_date", F.lit(1).cast(COUNT).alias("orders"),
                      F.col("amount").cast(MONEY).alias("spend"), zero.alias("deliveries"),
                      zero.alias("late_deliveries"), zero.alias("rating_count"),
                      zero.alias("rating_sum")),
        deliveries.select("user_key", "event_date", zero.alias("orders"), none.alias("spend"),
                          F.lit(1).cast(COUNT).alias("deliveries"),
                          _is_late().cast(COUNT).alias("late_deliveries"),
                          zero.alias("rating_count"), zero.alias("rating_sum")),
        ratings.select("user_key", "event_date", zero.alias("orders"), none.alias("spend"),
                       zero.alias("deliveries"), zero.alias("late_deliveries"),
                       _is_rated().alias("rating_count"),
                       F.coalesce(F.col("rating").cast(COUNT), zero).alias("rating_sum")),
    ]
    unioned = parts[0].unionByName(parts[1]).unionByName(parts[2])
    daily = unioned.groupBy("user_key", "event_date").agg(
        F.sum("orders").alias("orders"),
        F.coalesce(F.sum("spend"), F.lit(0).cast(MONEY)).cast(MONEY).alias("spend"),
        F.sum("deliveries").alias("deliveries"),
        F.sum("late_deliveries").alias("late_deliveries"),
        F.sum("rating_count").alias("rating_count"),
        F.sum("rating_sum").alias("rating_sum"),
    )
    return daily.withColumn(
        "mean_rating",
        F.when(F.col("rating_count") > 0, F.col("rating_sum") / F.col("rating_count")),
    )


def _is_late() -> Column:
    # A delivery without both times is not known to be late; it still counts as a delivery.
    return F.coalesce(F.col("actual_minutes") > F.col("promised_minutes"), F.lit(False))


def _is_rated() -> Column:
    # A rating event without a rating counts in neither the count nor the sum.
    return F.col("rating").isNotNull().cast(COUNT)


def end_of_day(day: Column) -> Column:
    """The last microsecond of ``day``, UTC: the ``feature_ts`` of a row of that day."""
    return F.timestamp_micros(F.unix_micros(F.to_timestamp(F.date_add(day, 1))) - F.lit(1))


def _window_parts(days: int, values: dict[str, Column]) -> list[tuple[Column, dict[str, Column]]]:
    """+value on the known day, -value on the day the event leaves the window (if inside it at all)."""
    known = known_day()
    leaves = F.date_add(F.col("event_date"), days)
    inside = known < leaves
    return [
        (F.when(inside, known), values),
        (F.when(inside, leaves), {name: -value for name, value in values.items()}),
    ]


def _deltas(events: DataFrame, parts: Sequence[tuple[Column, dict[str, Column]]]) -> DataFrame:
    """Every event's deltas, one row per part whose day is not null, from one read of the events.

    Each part is a day and the values it adds on it; a metric a part does not
    set is null there.
    """
    first: dict[str, Column] = {}
    for _, values in parts:
        for name, value in values.items():
            first.setdefault(name, value)
    names = list(first)
    types = {field.name: field.dataType
             for field in events.select(*[value.alias(name) for name, value in first.items()]).schema}
    rows = F.array(*[
        F.struct(day.alias("day"), *[
            (values[name] if name in values else F.lit(None)).cast(types[name]).alias(name)
            for name in names
        ])
        for day, values in parts
    ])
    return (
        events.select("user_key", F.explode(rows).alias("_delta"))
        .select("user_key", "_delta.*")
        .filter(F.col("day").isNotNull())
    )


def _state_deltas(state: DataFrame, windows: Sequence[int]) -> DataFrame:
    """Feature rows of day ``start_day - 1`` as deltas on ``start_day``, so running sums continue.

    The rating sum and the last order date are not stored, but both are exact
    functions of stored columns: ratings are whole numbers, so
    ``mean * count`` rounds back to the sum, and the last order date is the
    feature date minus the days since it.
    """
    return state.select(
        "user_key",
        F.col("start_day").alias("day"),
        *[F.col(name) for name in window_columns(windows)],
        F.col(LATE_DELIVERIES),
        F.col("rating_count"),
        F.coalesce(F.round(F.col("mean_rating") * F.col("rating_count")), F.lit(0))
        .cast(COUNT)
        .alias("rating_sum"),
        F.date_sub(F.col("start_day"), F.col("days_since_last_order") + 1).alias("last_order_date"),
    )


def user_features(
    orders: DataFrame,
    deliveries: DataFrame,
    ratings: DataFrame,
    *,
    as_of: date,
    windows: Sequence[int],
    version: str,
    starts: DataFrame | None = None,
    state: DataFrame | None = None,
    from_day: date | None = None,
) -> DataFrame:
    """As-known-at feature rows for every user and day up to ``as_of``.

    With none of ``starts``, ``state`` and ``from_day`` every user gets rows
    from their first known day: a full recompute. The others continue rows
    already computed. Every value is a running sum of deltas, so the row of
    day A equals the row of the day before a start plus the deltas dated from
    the start to A:

    - ``state`` (``user_key``, ``start_day`` and the feature columns of the
      user's row of ``start_day - 1``, null for a user with nothing known
      before) continues that row from ``start_day``, also on days with no
      delta.
    - ``starts`` (``user_key``, ``start_day``; one row each, and ``state``
      required with it) limits the rows to those users, from their own start
      day: for arrival days that came out of order.
    - ``from_day`` is one start day for every user: deltas dated before it
      are left out.

    Events whose deltas all fall before the start may be left out of the
    inputs.
    """
    # Each event table is read once: every event becomes its rows of deltas
    # by an explode, rather than one read of the table per kind of delta.
    order_parts: list[tuple[Column, dict[str, Column]]] = []
    metrics: list[str] = []
    for days in windows:
        names = {f"orders_{days}d": F.lit(1).cast(COUNT), f"spend_{days}d": F.col("amount").cast(MONEY)}
        order_parts += _window_parts(days, names)
        metrics += list(names)
    order_parts.append((known_day(), {"last_order_date": F.col("event_date")}))
    late = {LATE_DELIVERIES: _is_late().cast(COUNT)}
    # A delivery makes its user known even when it falls outside every window.
    delivery_parts = [*_window_parts(LATE_DELIVERY_DAYS, late), (known_day(), {})]
    metrics.append(LATE_DELIVERIES)
    known_ratings = {"rating_count": _is_rated(), "rating_sum": F.col("rating").cast(COUNT)}
    metrics += list(known_ratings)
    combined = (
        _deltas(orders, order_parts)
        .unionByName(_deltas(deliveries, delivery_parts), allowMissingColumns=True)
        .unionByName(
            ratings.select("user_key", known_day().alias("day"),
                           *[v.alias(n) for n, v in known_ratings.items()]),
            allowMissingColumns=True,
        )
    )
    if starts is not None and state is None:
        raise ValueError("user_features: starts need a state, one row per start")
    if state is not None:
        # The state has one row per start, so every start day gets a row, also
        # for a user with no delta on it.
        combined = combined.unionByName(_state_deltas(state, windows), allowMissingColumns=True)
    kept = F.col("user_key").isNotNull() & (F.col("day") <= F.lit(as_of))
    if from_day is not None:
        kept &= F.col("day") >= F.lit(from_day)
    combined = combined.filter(kept)
    # The only shuffle of the deltas: the join with starts, the grouping by
    # (user, day) and the window by user all keep to the partitioning by user.
    # Its count is fixed because the stage after it writes about three rows
    # per row it reads: adaptive execution would size the tasks by the rows
    # read and leave a few uneven ones.
    combined = combined.repartition(session.shuffle_partitions(combined.sparkSession), "user_key")
    if starts is not None:
        # Deltas before a user's start day are already inside the state row.
        combined = combined.join(starts, "user_key").filter(F.col("day") >= F.col("start_day"))
        combined = combined.drop("start_day")
    per_day = combined.groupBy("user_key", "day").agg(
        *[F.sum(name).alias(name) for name in metrics],
        F.max("last_order_date").alias("last_order_date"),
    )
    if from_day == as_of:
        # One day to compute: every delta left is dated as_of, so its sums
        # are the row, with no running window or expansion to run.
        changes = per_day.select(
            "user_key", F.col("day").alias("feature_date"),
            *[F.coalesce(F.col(name), F.lit(0)).alias(name) for name in metrics], "last_order_date",
        )
    else:
        changes = _expand_running(per_day, metrics, as_of)
    return changes.select(
        "user_key",
        "feature_date",
        end_of_day(F.col("feature_date")).alias("feature_ts"),
        *[F.col(name).cast(MONEY if name.startswith("spend") else COUNT).alias(name)
          for name in window_columns(windows)],
        F.col(LATE_DELIVERIES).cast(COUNT).alias(LATE_DELIVERIES),
        F.datediff(F.col("feature_date"), F.col("last_order_date")).alias("days_since_last_order"),
        F.col("rating_count").cast(COUNT).alias("rating_count"),
        F.when(F.col("rating_count") > 0,
               F.col("rating_sum") / F.col("rating_count")).alias("mean_rating"),
        F.lit(version).alias("feature_version"),
    )


def _expand_running(per_day: DataFrame, metrics: Sequence[str], as_of: date) -> DataFrame:
    """Running sums over each user's days with deltas, expanded to one row per day up to ``as_of``.

    Values change only on days with a delta: each such day's sums hold until
    the day before the next one (or as_of), so the window runs over the days
    with deltas and the dense rows come from expanding them.
    """
    by_day = Window.partitionBy("user_key").orderBy("day")
    running = by_day.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    summed = per_day.select(
        "user_key",
        "day",
        *[F.coalesce(F.sum(name).over(running), F.lit(0)).alias(name) for name in metrics],
        F.max("last_order_date").over(running).alias("last_order_date"),
        F.lead("day").over(by_day).alias("_next_day"),
    )
    return summed.select(
        "user_key",
        F.explode(
            F.sequence(F.col("day"), F.coalesce(F.date_sub(F.col("_next_day"), 1), F.lit(as_of)))
        ).alias("feature_date"),
        *metrics,
        "last_order_date",
    )


# --- tables ----------------------------------------------------------------------------


def table_specs(settings: Settings) -> list[tables.TableSpec]:
    """The gold tables."""
    return [user_daily_spec(settings), user_features_spec(settings)]
