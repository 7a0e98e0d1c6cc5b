"""Small deterministic inputs for training: silver orders and the gold features they imply.

Users order at different rates and some stop ordering, so churn is learnable from the
features (recent orders, days since the last order). The feature rows are computed from
the orders as known at the end of each day, like gold.user_features, so the training
set's point-in-time join finds them.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from decimal import Decimal

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from lakeward import gold, tables
from lakeward.config import Settings

START = date(2026, 1, 1)
DAYS = 110

ORDERS = T.StructType([
    T.StructField("event_id", T.StringType()),
    T.StructField("user_key", T.StringType()),
    T.StructField("event_ts", T.TimestampType()),
    T.StructField("event_date", T.DateType()),
    T.StructField("amount", T.DecimalType(12, 2)),
    T.StructField("_arrival_date", T.DateType()),
])

RAW_IDS = [f"raw-user-{i:04d}@example.com" for i in range(400)]


def user_key(raw: str) -> str:
    # A stand-in pseudonym; tests check neither it nor the raw id reaches MLflow.
    import hashlib

    return "uk" + hashlib.sha256(raw.encode()).hexdigest()[:30]


def order_rows(users: int, seed: int = 3, *, start: date = START, days: int = DAYS) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for index in range(users):
        key = user_key(RAW_IDS[index])
        gap = rng.choice([2, 3, 5, 8, 20, 35])
        stop = rng.randint(20, days) if rng.random() < 0.4 else days
        day = rng.randint(0, 10)
        n = 0
        while day < min(stop, days):
            ts = datetime(start.year, start.month, start.day) + timedelta(days=day, hours=rng.randint(8, 20))
            rows.append((f"{key}-o{n}", key, ts, ts.date(), Decimal(rng.randint(500, 5000)) / 100,
                         ts.date()))
            n += 1
            day += max(1, int(rng.expovariate(1 / gap)))
    return rows


def feature_rows(orders: list[tuple], *, start: date = START, days: int = DAYS,
                 version: str = "v1") -> list[tuple]:
    by_user: dict[str, list[tuple]] = {}
    for row in orders:
        by_user.setdefault(row[1], []).append(row)
    out = []
    for key, rows in sorted(by_user.items()):
        dates = sorted(r[3] for r in rows)
        amounts = {r[3]: r[4] for r in rows}
        first = dates[0]
        for offset in range((first - start).days, days):
            day = start + timedelta(days=offset)
            known = [d for d in dates if d <= day]

            def window(n: int, known: list[date] = known, day: date = day) -> list[date]:
                return [d for d in known if d > day - timedelta(days=n)]

            values: list[object] = []
            for n in (7, 30, 90):
                values += [len(window(n)), sum((amounts[d] for d in window(n)), Decimal(0))]
            last = max(known)
            values += [0, (day - last).days, 0, None]
            feature_ts = datetime(day.year, day.month, day.day) + timedelta(days=1)
            out.append((key, day, feature_ts, *values, version))
    return out


def write_inputs(spark: SparkSession, settings: Settings, users: int = 160, seed: int = 3) -> list[tuple]:
    """Write silver.orders and gold.user_features of ``settings``; returns the order rows."""
    orders = order_rows(users, seed)
    orders_name = settings.table("silver_orders")
    tables.ensure_schema(spark, orders_name.split(".")[0])
    tables.overwrite(spark.createDataFrame(orders, ORDERS), orders_name)
    spec = gold.user_features_spec(settings)
    tables.ensure_schema(spark, spec.name.split(".")[0])
    tables.overwrite(spark.createDataFrame(feature_rows(orders), spec.schema), spec.name)
    return orders


def append_orders(spark: SparkSession, settings: Settings, rows: list[tuple]) -> None:
    tables.append(spark.createDataFrame(rows, ORDERS), settings.table("silver_orders"))
