"""Training set assembly on hand-built data: labels, chosen feature rows, splits, spec and hash."""

import dataclasses
import json
import logging
import random
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward import tables
from lakeward.config import Settings, load_settings
from lakeward.splits import PARTS, group_split, leakage, temporal_split
from lakeward.training_set import (
    MAX_NAME_LENGTH,
    BuildSpec,
    TrainingSetError,
    assemble,
    assert_point_in_time,
    content_hash,
    last_unbroken_day,
    ledger_spec,
    stored_spec,
    table_name,
    temporal_bounds,
)

ORDERS = "event_id string, user_key string, event_ts timestamp"
FEATURES = ("user_key string, feature_date date, feature_ts timestamp, orders_7d bigint, "
            "mean_rating double, feature_version string")
TRAINING = ("label_id string, user_key string, label_ts timestamp, churned int, feature_date date, "
            "feature_ts timestamp, orders_7d bigint, mean_rating double, feature_version string, "
            "split string")


def ts(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour)


def midnight_after(day: date) -> datetime:
    return datetime(day.year, day.month, day.day) + timedelta(days=1)


ORDER_ROWS = [
    ("o1", "u1", ts(1, 2, 10)),   # next order o2 within 30 days: churned 0
    ("o2", "u1", ts(1, 20, 12)),  # in the gap before validation: dropped by the temporal split
    ("o3", "u1", ts(3, 25, 10)),  # next order o6 on 15 April: churned 0
    ("o6", "u1", ts(4, 15, 9)),   # window ends 15 May, after observed_until: censored, no label
    ("o4", "u2", ts(1, 5, 8)),    # newest feature row is 5 days old, beyond the TTL: null features
    ("o5", "u3", ts(2, 10, 9)),   # no later order: churned 1
]

FEATURE_ROWS = [
    ("u1", date(2026, 1, 1), 1, 4.0, "v1"),
    ("u1", date(2026, 1, 2), 2, 4.5, "v1"),   # known at 3 January 00:00, after o1
    ("u1", date(2026, 3, 24), 3, 3.0, "v1"),
    ("u1", date(2026, 3, 24), 9, 9.0, "v0"),  # another feature version: never used
    ("u2", date(2025, 12, 30), 5, None, "v1"),
    ("u3", date(2026, 2, 9), 1, None, "v1"),
    ("u3", date(2026, 2, 10), 2, 5.0, "v1"),  # known at 11 February 00:00, after o5
]


def spec(**changes) -> BuildSpec:
    base = BuildSpec(
        inputs={"silver.orders": 3, "gold.user_features": 1},
        horizon_days=30,
        ttl_days=3,
        split="temporal",
        fractions=(0.7, 0.15, 0.15),
        seed=7,
        t1=ts(2, 10),
        t2=ts(3, 20),
        observed_until=ts(5, 1),
        feature_version="v1",
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture()
def inputs(spark: SparkSession):
    orders = spark.createDataFrame(ORDER_ROWS, ORDERS)
    features = spark.createDataFrame(
        [(u, d, midnight_after(d), n, r, v) for u, d, n, r, v in FEATURE_ROWS], FEATURES
    )
    return orders, features


def test_assemble_temporal(spark: SparkSession, inputs) -> None:
    got = assemble(*inputs, spec())
    expected = spark.createDataFrame(
        [
            ("o1", "u1", ts(1, 2, 10), 0, date(2026, 1, 1), ts(1, 2), 1, 4.0, "v1", "train"),
            ("o4", "u2", ts(1, 5, 8), 1, None, None, None, None, None, "train"),
            ("o5", "u3", ts(2, 10, 9), 1, date(2026, 2, 9), ts(2, 10), 1, None, "v1", "validation"),
            ("o3", "u1", ts(3, 25, 10), 0, date(2026, 3, 24), ts(3, 25), 3, 3.0, "v1", "test"),
        ],
        TRAINING,
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_assemble_group_split_keeps_every_label_and_each_user_in_one_part(
    spark: SparkSession, inputs
) -> None:
    group = spec(split="group", t1=None, t2=None, fractions=(0.4, 0.3, 0.3), seed=3)
    got = assemble(*inputs, group)
    assert sorted(r["label_id"] for r in got.collect()) == ["o1", "o2", "o3", "o4", "o5"]
    assert leakage(got, key="user_key") == []
    users = spark.createDataFrame([("u1",), ("u2",), ("u3",)], "user_key string")
    expected = {r["user_key"]: r["split"] for r in
                group_split(users, key="user_key", fractions=(0.4, 0.3, 0.3), seed=3).collect()}
    assert {(r["user_key"], r["split"]) for r in got.collect()} == set(expected.items())
    o2 = got.filter("label_id = 'o2'").first()
    # The newest feature row of u1 before o2 is 17 days old, beyond the 3-day TTL.
    assert o2["churned"] == 1 and o2["feature_ts"] is None


def test_assemble_without_ttl_takes_older_rows(inputs) -> None:
    got = {r["label_id"]: r for r in assemble(*inputs, spec(ttl_days=None)).collect()}
    assert got["o4"]["feature_date"] == date(2025, 12, 30) and got["o4"]["orders_7d"] == 5


def test_a_group_split_without_a_train_share_is_built_with_a_warning(
    inputs, caplog: pytest.LogCaptureFixture
) -> None:
    from lakeward.training_set import _verify

    no_train = spec(split="group", t1=None, t2=None, fractions=(0.0, 0.5, 0.5))
    with caplog.at_level(logging.WARNING, logger="lakeward.training_set"):
        rows = _verify(assemble(*inputs, no_train), no_train, "silver.orders")
    assert rows["train"] == 0 and sum(rows.values()) == 5
    assert "the fractions give train no share: `lakeward train` cannot use this set" in caplog.text


def test_assemble_names_missing_columns(inputs) -> None:
    orders, features = inputs
    with pytest.raises(TrainingSetError, match=r"features is missing column\(s\) \['feature_version'\]"):
        assemble(orders, features.drop("feature_version"), spec())


def test_build_spec_json_round_trip() -> None:
    original = spec()
    text = original.to_json()
    again = BuildSpec.from_json(text)
    assert again == original and again.to_json() == text
    assert again.t1 == datetime(2026, 2, 10, tzinfo=UTC) and again.fractions == (0.7, 0.15, 0.15)
    group = spec(split="group", t1=None, t2=None, ttl_days=None)
    assert BuildSpec.from_json(group.to_json()) == group
    # Naive values and dates are UTC; other zones are converted.
    assert spec(observed_until=date(2026, 5, 1)) == original
    assert spec(observed_until=datetime(2026, 5, 1, 2, tzinfo=timezone(timedelta(hours=2)))) == original
    recorded = spec(feature_columns=["orders_7d", "mean_rating"], input_ids={"silver.orders": "id-1"})
    assert BuildSpec.from_json(recorded.to_json()) == recorded
    assert recorded.feature_columns == ("orders_7d", "mean_rating")
    # A spec written before the feature columns and table ids were recorded still reads.
    older = json.loads(text)
    del older["feature_columns"], older["input_ids"]
    assert BuildSpec.from_json(json.dumps(older)) == original
    with pytest.raises(TrainingSetError, match="feature_columns must be a list of names"):
        BuildSpec.from_json(json.dumps({**older, "feature_columns": "abc", "input_ids": None}))
    with pytest.raises(TrainingSetError, match="keys"):
        BuildSpec.from_json(text[:-1] + ',"surprise":1}')
    with pytest.raises(TrainingSetError, match="must be JSON"):
        BuildSpec.from_json("not json")
    with pytest.raises(TrainingSetError, match="needs both t1 and t2"):
        spec(t2=None)
    with pytest.raises(TrainingSetError, match="t1 < t2"):
        spec(t1=ts(3, 20), t2=ts(2, 10))


def test_the_latest_build_of_a_version_is_the_stored_spec(
    spark: SparkSession, fresh_settings: Settings
) -> None:
    """A training set table dropped and built again starts its versions over."""
    ledger = ledger_spec(fresh_settings)
    tables.ensure_table(spark, ledger)
    name = table_name(fresh_settings, None)
    # The earlier build comes first in commit order and, with more feature columns, in a
    # larger file, which Spark also reads first: a read without an order would find it.
    earlier = spec(seed=7, feature_columns=[f"f{i}" for i in range(200)])
    for built, at in ((earlier, datetime(2026, 6, 1)), (spec(seed=8), datetime(2026, 6, 2))):
        rows = [(f"b{built.seed}", name, 0, table, version, 10, "h", built.to_json(), at)
                for table, version in built.inputs.items()]
        tables.append(spark.createDataFrame(rows, ledger.schema).coalesce(1), ledger.name)
    assert stored_spec(spark, fresh_settings, version=0).seed == 8


def test_content_hash_ignores_row_order_and_sees_every_value(spark: SparkSession) -> None:
    rows = [(i, f"k{i % 3}", None if i % 4 == 0 else float(i)) for i in range(40)]
    schema = "id int, key string, value double"
    df = spark.createDataFrame(rows, schema)
    shuffled = spark.createDataFrame(list(reversed(rows)), schema).repartition(3)
    assert content_hash(df) == content_hash(shuffled)
    assert len(content_hash(df)) == 64

    changed = [*rows[:-1], (39, "k0", 39.5)]
    assert content_hash(spark.createDataFrame(changed, schema)) != content_hash(df)
    fewer = spark.createDataFrame(rows[:-1], schema)
    assert content_hash(fewer) != content_hash(df)
    duplicated = spark.createDataFrame([*rows, rows[0]], schema)
    assert content_hash(duplicated) != content_hash(df)
    assert content_hash(df.withColumnRenamed("value", "v")) != content_hash(df)

    pair = "a string, b string"
    left = spark.createDataFrame([(None, "x")], pair)
    right = spark.createDataFrame([("x", None)], pair)
    assert content_hash(left) != content_hash(right)


def test_future_feature_check(spark: SparkSession) -> None:
    schema = "label_id string, label_ts timestamp, feature_ts timestamp"
    fine = spark.createDataFrame(
        [("a", ts(1, 2, 10), ts(1, 2)), ("b", ts(1, 2, 10), ts(1, 2, 10)), ("c", ts(1, 2), None)],
        schema,
    )
    assert_point_in_time(fine)
    leaky = fine.unionByName(spark.createDataFrame([("d", ts(1, 2, 10), ts(1, 3))], schema))
    with pytest.raises(TrainingSetError, match=r"1 training row\(s\) have feature_ts later .* label d"):
        assert_point_in_time(leaky)


def test_temporal_bounds_exact() -> None:
    first = datetime(2026, 1, 1, tzinfo=UTC)
    t1, t2 = temporal_bounds(first, first + timedelta(days=160), horizon=timedelta(days=30),
                             fractions=(0.7, 0.15, 0.15))
    assert (t1 - first, t2 - first) == (timedelta(days=100), timedelta(days=145))
    with pytest.raises(TrainingSetError, match="needs more than 60 days"):
        temporal_bounds(first, first + timedelta(days=60), horizon=timedelta(days=30),
                        fractions=(0.7, 0.15, 0.15))
    with pytest.raises(TrainingSetError, match=r"validation share 0\.0 .* leaves validation no time"):
        temporal_bounds(first, first + timedelta(days=160), horizon=timedelta(days=30),
                        fractions=(0.8, 0.0, 0.2))


def test_last_unbroken_day() -> None:
    d = [date(2026, 3, 1) + timedelta(days=i) for i in range(6)]
    assert last_unbroken_day([d[0]]) == (d[0], None)
    assert last_unbroken_day([d[2], d[0], d[1], d[1]]) == (d[2], None)
    assert last_unbroken_day([d[0], d[1], d[3], d[5]]) == (d[1], d[2])
    assert last_unbroken_day([d[5], d[0]]) == (d[0], d[1])


def test_training_set_names_are_lower_case_bounded_and_not_lakeward_tables() -> None:
    settings = load_settings("local")
    assert table_name(settings) == "ml.training_set"
    # The catalog keeps names lower-cased: one table, one name in the ledger.
    assert table_name(settings, "Churn_V2") == "ml.churn_v2"
    assert table_name(settings, "c" * MAX_NAME_LENGTH) == "ml." + "c" * MAX_NAME_LENGTH
    with pytest.raises(TrainingSetError, match=f"at most {MAX_NAME_LENGTH} characters, got 256"):
        table_name(settings, "c" * 256)
    with pytest.raises(TrainingSetError, match="ml.predictions is one of lakeward's own tables"):
        table_name(settings, "Predictions")
    with pytest.raises(TrainingSetError, match="plain identifier"):
        table_name(settings, "a.b")


@pytest.mark.parametrize("seed", range(4))
def test_computed_temporal_bounds_are_leak_free(spark: SparkSession, seed: int) -> None:
    rng = random.Random(seed)
    horizon = timedelta(days=rng.choice([7, 30]))
    start = datetime(2026, 1, 1)
    span = 2 * horizon + timedelta(days=rng.randrange(10, 90), seconds=rng.randrange(86400))
    stamps = [start, start + span] + [start + span * rng.random() for _ in range(400)]
    labels = spark.createDataFrame([(f"l{i}", t) for i, t in enumerate(stamps)],
                                   "label_id string, label_ts timestamp")
    t1, t2 = temporal_bounds(min(stamps), max(stamps), horizon=horizon, fractions=(0.6, 0.2, 0.2))
    split = temporal_split(labels, ts="label_ts", t1=t1, t2=t2, gap=horizon)
    assert leakage(split, ts="label_ts", horizon=horizon) == []
    parts = {r["split"]: r["count"] for r in split.groupBy("split").count().collect()}
    assert set(parts) == set(PARTS)
    last_train = split.filter("split = 'train'").agg(F.max("label_ts")).first()[0]
    assert last_train.replace(tzinfo=UTC) + horizon < t1
    # The bounds themselves: the range minus two gaps, cut 60/20/20, each cut followed by a gap.
    usable, second = span - 2 * horizon, timedelta(seconds=1)
    assert abs(t1 - horizon - (start.replace(tzinfo=UTC) + usable * 0.6)) <= second
    assert abs(t2 - horizon - t1 - usable * 0.2) <= second
