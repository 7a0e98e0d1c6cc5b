"""Churn labels: for each order at time t, whether the user orders again within (t, t + horizon].

Only orders whose whole window is observed get a label (no censored labels).
``observed_until`` is an exclusive end: every instant before it is observed,
so a window is complete when ``t + horizon < observed_until``.

    labels = churn_labels(orders, horizon=timedelta(days=30), observed_until=end_of_data)
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import columns


def churn_labels(orders: DataFrame, *, horizon: timedelta, observed_until: datetime) -> DataFrame:
    """One row per order: ``label_id``, ``user_key``, ``label_ts``, ``churned`` (1 or 0).

    ``orders`` needs ``event_id``, ``user_key`` and ``event_ts``. The window is
    open at ``t`` and closed at ``t + horizon``: an order at the same instant
    does not count as a next order, one exactly ``horizon`` later does. So
    the window's last instant must be observed too: see :func:`fully_observed`.
    An order with a null ``user_key`` or ``event_ts`` gets no label and is
    no one's next order.
    """
    columns.require_timedelta("horizon", horizon, positive=True)
    if not isinstance(observed_until, date):
        raise TypeError(
            f"observed_until must be a datetime or a date, got {type(observed_until).__name__} "
            f"{observed_until!r}"
        )
    event_id, user_key, event_ts = columns.resolve(
        orders, ("event_id", "user_key", "event_ts"), what="orders"
    )
    found = orders.schema[event_ts].dataType
    if not isinstance(found, T.TimestampType):
        raise TypeError(f"{event_ts} in orders must be a timestamp column; it is {found.simpleString()}")
    span = columns.micros(horizon)
    user, at = columns.ref(user_key), columns.ref(event_ts)
    following = Window.partitionBy(user).orderBy(F.unix_micros(at)).rangeBetween(1, span)
    return (
        orders.filter(user.isNotNull() & at.isNotNull())
        .withColumn("_next_orders", F.count(F.lit(1)).over(following))
        .filter(fully_observed(horizon, observed_until, ts=event_ts))
        .select(
            columns.ref(event_id).alias("label_id"),
            user.alias("user_key"),
            at.alias("label_ts"),
            (F.col("_next_orders") == 0).cast("int").alias("churned"),
        )
    )


def fully_observed(horizon: timedelta, observed_until: datetime, *, ts: str = "event_ts") -> Column:
    """Whether the window ``(ts, ts + horizon]`` ends before ``observed_until``.

    ``observed_until`` itself is not observed (an event at that instant may
    still arrive), and the window includes its end.
    """
    end = columns.instant_micros(columns.time_bound(observed_until))
    return columns.after(columns.ref(ts), horizon) < end
