"""gold.user_features against a brute-force oracle on randomized data, late events included."""

import random
from datetime import date, timedelta
from decimal import Decimal

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward.gold import user_daily, user_features
from tests.pipeline_checks import features_oracle

START = date(2026, 1, 1)
ORDERS = "user_key string, event_date date, _arrival_date date, amount decimal(12,2)"
DELIVERIES = ("user_key string, event_date date, _arrival_date date, promised_minutes int, "
              "actual_minutes int")
RATINGS = "user_key string, event_date date, _arrival_date date, rating int"
WINDOWS = (3, 7)


def _random_events(seed: int):
    rng = random.Random(seed)
    users = [f"u{seed}_{i}" for i in range(4)]

    def when():
        event = START + timedelta(days=rng.randrange(20))
        late = rng.choice([0, 0, 0, 1, 2, 5, 9])
        return event, event + timedelta(days=late)

    orders = [(rng.choice(users), *when(), Decimal(rng.randrange(100, 5000)) / 100) for _ in range(40)]
    # Silver lets a missing delivery time or rating through: a null is no value.
    deliveries = [(rng.choice(users), *when(), 30, rng.choice([20, 30, 31, 60, None])) for _ in range(30)]
    ratings = [(rng.choice(users), *when(), rng.choice([1, 2, 3, 4, 5, None])) for _ in range(20)]
    return orders, deliveries, ratings


@pytest.mark.parametrize("as_of_day", [12, 24])
def test_user_features_match_oracle(spark: SparkSession, as_of_day: int) -> None:
    # Users of every seed are distinct, so all seeds run as one Spark job.
    orders, deliveries, ratings = [], [], []
    for seed in range(8):
        o, d, r = _random_events(seed)
        orders += o
        deliveries += d
        ratings += r
    as_of = START + timedelta(days=as_of_day)
    got = user_features(
        spark.createDataFrame(orders, ORDERS),
        spark.createDataFrame(deliveries, DELIVERIES),
        spark.createDataFrame(ratings, RATINGS),
        as_of=as_of, windows=WINDOWS, version="vT",
    )
    expected_rows = features_oracle(orders, deliveries, ratings, as_of, WINDOWS, "vT")
    expected = spark.createDataFrame(expected_rows, schema=got.schema)
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)



@pytest.mark.parametrize(("from_day", "as_of_day"), [(12, 12), (12, 17), (1, 1)])
def test_rows_continued_from_the_day_before_match_oracle(
    spark: SparkSession, from_day: int, as_of_day: int
) -> None:
    """The increment's path: each user's row of the day before, plus the deltas from ``from_day``."""
    orders, deliveries, ratings = [], [], []
    for seed in range(20, 28):
        o, d, r = _random_events(seed)
        orders += o
        deliveries += d
        ratings += r
    first, as_of = START + timedelta(days=from_day), START + timedelta(days=as_of_day)
    frames = (spark.createDataFrame(orders, ORDERS), spark.createDataFrame(deliveries, DELIVERIES),
              spark.createDataFrame(ratings, RATINGS))
    day_before = user_features(*frames, as_of=first - timedelta(days=1), windows=WINDOWS, version="vT")
    state = day_before.filter(F.col("feature_date") == F.lit(first - timedelta(days=1))).select(
        F.lit(first).alias("start_day"), *[c for c in day_before.columns if c != "feature_date"]
    )
    got = user_features(*frames, as_of=as_of, windows=WINDOWS, version="vT", state=state, from_day=first)
    expected_rows = [r for r in features_oracle(orders, deliveries, ratings, as_of, WINDOWS, "vT")
                     if r["feature_date"] >= first]
    expected = spark.createDataFrame(expected_rows, schema=got.schema)
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)

def test_late_event_only_changes_later_rows(spark: SparkSession) -> None:
    on_time = [("u", date(2026, 1, 1), date(2026, 1, 1), Decimal("10.00"))]
    late = on_time + [("u", date(2026, 1, 2), date(2026, 1, 5), Decimal("5.00"))]
    empty_d = spark.createDataFrame([], DELIVERIES)
    empty_r = spark.createDataFrame([], RATINGS)

    def rows(orders):
        df = user_features(spark.createDataFrame(orders, ORDERS), empty_d, empty_r,
                           as_of=date(2026, 1, 6), windows=(7,), version="v")
        return {r["feature_date"]: r["orders_7d"] for r in df.collect()}

    before, after = rows(on_time), rows(late)
    assert [after[date(2026, 1, d)] for d in range(1, 7)] == [1, 1, 1, 1, 2, 2]
    assert all(before[date(2026, 1, d)] == 1 for d in range(1, 7))


def test_user_daily(spark: SparkSession) -> None:
    d = date(2026, 1, 1)
    got = user_daily(
        spark.createDataFrame([("u", d, d, Decimal("10.00")), ("u", d, d, Decimal("2.50"))], ORDERS),
        spark.createDataFrame([("u", d, d, 30, 45)], DELIVERIES),
        spark.createDataFrame([("u", d, d, 4), ("u", d, d, 5)], RATINGS),
    ).first()
    assert (got["orders"], got["spend"], got["deliveries"], got["late_deliveries"]) == (
        2, Decimal("12.50"), 1, 1)
    assert (got["rating_count"], got["rating_sum"], got["mean_rating"]) == (2, 9, 4.5)


def test_user_daily_counts_no_missing_values(spark: SparkSession) -> None:
    d = date(2026, 1, 1)
    got = user_daily(
        spark.createDataFrame([], ORDERS),
        spark.createDataFrame([("u", d, d, 30, None)], DELIVERIES),
        spark.createDataFrame([("u", d, d, None), ("u", d, d, 4)], RATINGS),
    ).first()
    assert (got["deliveries"], got["late_deliveries"]) == (1, 0)
    assert (got["rating_count"], got["rating_sum"], got["mean_rating"]) == (1, 4, 4.0)
