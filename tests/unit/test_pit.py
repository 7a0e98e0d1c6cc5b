"""Unit tests for lakeward.pit.as_of_join against a brute-force Python oracle."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import pit
from lakeward.pit import AsOfJoinError, ColumnClashError, MissingColumnsError, as_of_join

T0 = datetime(2024, 3, 1, 12, 0, 0)
TTL = timedelta(seconds=5)

LABELS = T.StructType(
    [
        T.StructField("seed", T.IntegerType()),
        T.StructField("k1", T.StringType()),
        T.StructField("k2", T.IntegerType()),
        T.StructField("label_ts", T.TimestampType()),
        T.StructField("label_id", T.IntegerType()),
        T.StructField("y", T.DoubleType()),
    ]
)
# Keys interleaved with feature columns on purpose: output follows this order.
FEATURES = T.StructType(
    [
        T.StructField("seed", T.IntegerType()),
        T.StructField("k1", T.StringType()),
        T.StructField("a", T.IntegerType()),
        T.StructField("feature_ts", T.TimestampType()),
        T.StructField("k2", T.IntegerType()),
        T.StructField("b", T.StringType()),
        T.StructField("c", T.DoubleType()),
    ]
)
KEYS = ["seed", "k1", "k2"]

Row = dict[str, Any]


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- oracle -------------------------------------------------------------------------------


def _null_smallest(value: Any) -> tuple[int, Any]:
    return (0, 0) if value is None else (1, value)


def oracle(
    labels: Sequence[Row],
    features: Sequence[Row],
    *,
    label_columns: Sequence[str],
    feature_columns: Sequence[str],
    keys: Sequence[str],
    label_ts: str,
    feature_ts: str,
    ttl: timedelta | None,
) -> list[tuple[Any, ...]]:
    """The contract, by brute force: greatest feature_ts in [label_ts - ttl, label_ts],
    ties broken by the greatest (feature columns in order, null smallest)."""
    payload = [c for c in feature_columns if c not in keys]
    out = []
    for label in labels:
        best, best_rank = None, None
        usable = label[label_ts] is not None and all(label[k] is not None for k in keys)
        for feature in features if usable else ():
            ts = feature[feature_ts]
            if ts is None or any(feature[k] is None or feature[k] != label[k] for k in keys):
                continue
            if ts > label[label_ts] or (ttl is not None and ts < label[label_ts] - ttl):
                continue
            rank = (ts, tuple(_null_smallest(feature[c]) for c in payload))
            if best_rank is None or rank > best_rank:
                best, best_rank = feature, rank
        out.append(
            tuple(label[c] for c in label_columns)
            + tuple(None if best is None else best[c] for c in payload)
        )
    return out


def _sorted(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (tuple(r) for r in rows),
        key=lambda r: tuple((0, "") if v is None else (1, repr(v)) for v in r),
    )


# --- random data ---------------------------------------------------------------------------


def random_case(seed: int, n_labels: int = 40, n_features: int = 60) -> tuple[list[Row], list[Row]]:
    """Small key and time ranges so that ties, equal timestamps and boundaries are frequent."""
    rng = random.Random(seed)

    def maybe(value: Any, p_null: float = 0.05) -> Any:
        return None if rng.random() < p_null else value

    def ts() -> datetime | None:
        # Mostly whole seconds, for ties; a microsecond either side of one, for exact order.
        micros = rng.choice([0, 0, 0, 0, 1, 999_999])
        return maybe(at(rng.randint(0, 30)) + timedelta(microseconds=micros))

    features: list[Row] = []
    for _ in range(n_features):
        features.append(
            {
                "seed": seed,
                "k1": maybe(rng.choice("xyz")),
                "k2": maybe(rng.choice([1, 2])),
                "feature_ts": ts(),
                "a": rng.choice([None, 1, 2, 3]),
                "b": rng.choice([None, "p", "q"]),
                "c": rng.choice([None, -1.5, 0.0, 2.5]),
            }
        )
    features += [dict(rng.choice(features)) for _ in range(4)]  # exact duplicates
    labels: list[Row] = []
    for i in range(n_labels):
        labels.append(
            {
                "seed": seed,
                # "w" never occurs in the features: labels without any feature row.
                "k1": maybe(rng.choice("xyzw")),
                "k2": maybe(rng.choice([1, 2])),
                "label_ts": ts(),
                "label_id": i,
                "y": rng.choice([0.0, 1.0]),
            }
        )
    # Exact TTL boundaries: feature_ts == label_ts - ttl (in), one microsecond and one second older (out).
    dated = [f for f in features if f["feature_ts"] is not None]
    for i in range(6):
        f = rng.choice(dated)
        shift = TTL + [timedelta(0), timedelta(microseconds=1), timedelta(seconds=1)][i % 3]
        labels.append(
            {"seed": seed, "k1": f["k1"], "k2": f["k2"], "label_ts": f["feature_ts"] + shift,
             "label_id": 100 + i, "y": 1.0}
        )
    labels += [dict(rng.choice(labels)) for _ in range(5)]  # duplicate label rows
    rng.shuffle(labels)
    return labels, features


SEEDS = range(25)


@pytest.fixture(scope="module")
def random_data(spark: SparkSession) -> tuple[dict[int, tuple[list[Row], list[Row]]], DataFrame,
                                              DataFrame]:
    cases = {seed: random_case(seed) for seed in SEEDS}
    return cases, *_frames(spark, cases, LABELS, FEATURES)


def _frames(spark: SparkSession, cases: dict[int, tuple[list[Row], list[Row]]], label_schema: T.StructType,
            feature_schema: T.StructType) -> tuple[DataFrame, DataFrame]:
    label_rows = [tuple(r[f.name] for f in label_schema) for ls, _ in cases.values() for r in ls]
    feature_rows = [tuple(r[f.name] for f in feature_schema) for _, fs in cases.values() for r in fs]
    labels = spark.createDataFrame(label_rows, label_schema)
    return labels, spark.createDataFrame(feature_rows, feature_schema)


def _without_time_zone(schema: T.StructType) -> T.StructType:
    return T.StructType([
        T.StructField(f.name, T.TimestampNTZType()) if isinstance(f.dataType, T.TimestampType) else f
        for f in schema.fields
    ])


def _check_against_oracle(
    cases: dict[int, tuple[list[Row], list[Row]]], result: DataFrame, ttl: timedelta | None
) -> None:
    by_seed: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in result.collect():
        by_seed[row["seed"]].append(tuple(row))
    for seed, (labels, features) in cases.items():
        expected = oracle(
            labels, features, label_columns=LABELS.fieldNames(),
            feature_columns=FEATURES.fieldNames(), keys=KEYS,
            label_ts="label_ts", feature_ts="feature_ts", ttl=ttl,
        )
        assert _sorted(by_seed[seed]) == _sorted(expected), f"seed {seed}"


@pytest.mark.parametrize("ttl", [None, TTL], ids=["no-ttl", "ttl"])
def test_matches_oracle_on_random_data(random_data: Any, ttl: timedelta | None) -> None:
    cases, labels, features = random_data
    result = as_of_join(labels, features, keys=KEYS, label_ts="label_ts",
                        feature_ts="feature_ts", ttl=ttl)
    assert result.columns == LABELS.fieldNames() + ["a", "feature_ts", "b", "c"]
    _check_against_oracle(cases, result, ttl)


@pytest.mark.parametrize("ttl", [None, TTL], ids=["no-ttl", "ttl"])
def test_matches_oracle_on_random_data_without_time_zone(
    spark: SparkSession, random_data: Any, ttl: timedelta | None
) -> None:
    cases = random_data[0]
    labels, features = _frames(spark, cases, _without_time_zone(LABELS), _without_time_zone(FEATURES))
    result = as_of_join(labels, features, keys=KEYS, label_ts="label_ts", feature_ts="feature_ts", ttl=ttl)
    assert isinstance(result.schema["feature_ts"].dataType, T.TimestampNTZType)
    _check_against_oracle(cases, result, ttl)


# Without a ttl, a label's match can lie several buckets back: the carry over
# buckets is then what finds it (with the ttl, a feature that old is out anyway).
@pytest.mark.parametrize(("ttl", "buckets"), [(TTL, 4), (None, 4), (None, 8)])
def test_time_buckets_and_input_order_do_not_change_the_result(
    random_data: Any, ttl: timedelta | None, buckets: int
) -> None:
    cases, labels, features = random_data
    result = as_of_join(labels.repartition(3), features.repartition(3), keys=KEYS,
                        label_ts="label_ts", feature_ts="feature_ts", ttl=ttl, time_buckets=buckets)
    _check_against_oracle(cases, result, ttl)


@pytest.mark.parametrize(("ttl", "buckets"), [(None, None), (TTL, None), (TTL, 3), (None, 8)])
def test_prefiltered_features_match_oracle(random_data: Any, ttl: timedelta | None,
                                           buckets: int | None) -> None:
    cases, labels, features = random_data
    result = as_of_join(labels, features, keys=KEYS, label_ts="label_ts",
                        feature_ts="feature_ts", ttl=ttl, time_buckets=buckets, prefilter=True)
    _check_against_oracle(cases, result, ttl)


# --- hand-written cases --------------------------------------------------------------------

SMALL_LABELS = T.StructType(
    [
        T.StructField("user", T.StringType()),
        T.StructField("ts", T.TimestampType()),
        T.StructField("label", T.IntegerType()),
    ]
)
SMALL_FEATURES = T.StructType(
    [
        T.StructField("user", T.StringType()),
        T.StructField("ts", T.TimestampType()),
        T.StructField("v", T.IntegerType()),
    ]
)
SMALL_OUT = T.StructType(
    [*SMALL_LABELS.fields, T.StructField("f_ts", T.TimestampType()),
     T.StructField("f_v", T.IntegerType())]
)


def _small(spark: SparkSession, labels: list[tuple[Any, ...]],
           features: list[tuple[Any, ...]]) -> tuple[DataFrame, DataFrame]:
    return (spark.createDataFrame(labels, SMALL_LABELS),
            spark.createDataFrame(features, SMALL_FEATURES))


def test_bounds_ties_duplicates_and_nulls(spark: SparkSession) -> None:
    labels, features = _small(
        spark,
        [
            ("u", at(10), 1),   # equal timestamps: inclusive upper bound, tie -> greatest v
            ("u", at(10), 1),   # duplicate label row: comes out twice
            ("u", at(16), 2),   # feature_ts == label_ts - ttl: still in
            ("u", at(17), 3),   # one second older than the TTL allows: out
            ("u", at(9), 4),    # before every usable feature
            ("v", at(10), 5),   # no feature rows for this key
            (None, at(10), 6),  # null key never matches (even a null-keyed feature)
            ("u", None, 7),     # null timestamp never matches
        ],
        [
            ("u", at(10), 3),
            ("u", at(10), 7),
            ("u", at(10), None),
            ("u", at(11), 1),   # after the labels at 10
            ("u", None, 99),    # null feature_ts never matches
            (None, at(1), 98),
        ],
    )
    result = as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="ts",
                        ttl=timedelta(seconds=5), prefix="f_")
    expected = spark.createDataFrame(
        [
            ("u", at(10), 1, at(10), 7),
            ("u", at(10), 1, at(10), 7),
            ("u", at(16), 2, at(11), 1),
            ("u", at(17), 3, None, None),
            ("u", at(9), 4, None, None),
            ("v", at(10), 5, None, None),
            (None, at(10), 6, None, None),
            ("u", None, 7, None, None),
        ],
        SMALL_OUT,
    )
    assert_df_equality(result, expected, ignore_row_order=True)


@pytest.mark.parametrize("prefilter", [False, True])
def test_a_match_buckets_back_is_carried_over_buckets_with_labels_only(
    spark: SparkSession, prefilter: bool
) -> None:
    # Three buckets over 0..29 s: [0, 10), [10, 20), [20, 30). u's only feature is in
    # the first; the second holds labels only, which must not break the carry.
    labels, features = _small(
        spark,
        [("u", at(12), 1), ("u", at(25), 2), ("w", at(29), 3), ("w", at(0), 4)],
        [("u", at(0), 7), ("w", at(15), 8)],
    )
    result = as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="ts", prefix="f_",
                        time_buckets=3, prefilter=prefilter)
    expected = spark.createDataFrame(
        [("u", at(12), 1, at(0), 7), ("u", at(25), 2, at(0), 7), ("w", at(29), 3, at(15), 8),
         ("w", at(0), 4, None, None)],
        SMALL_OUT,
    )
    assert_df_equality(result, expected, ignore_row_order=True)


def test_wall_clock_times_keep_their_order_in_buckets_across_a_clock_change(spark: SparkSession) -> None:
    # In New York, 02:30 on 8 March 2026 does not exist: as an instant it would come
    # after 03:00 and land in a later bucket than the label it precedes.
    day = datetime(2026, 3, 8)
    ntz = "k string, ts timestamp_ntz, v string"
    features = spark.createDataFrame(
        [("a", day, "f0"), ("a", day.replace(hour=2, minute=30), "gap"), ("a", day.replace(hour=10), "late")],
        ntz,
    )
    labels = spark.createDataFrame([("a", day.replace(hour=3), "label")], ntz).withColumnRenamed("v", "l")
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        found = {
            buckets: as_of_join(labels, features, keys=["k"], label_ts="ts", feature_ts="ts", prefix="f_",
                                time_buckets=buckets).collect()[0]["f_v"]
            for buckets in (None, 2, 20, 40, 100)
        }
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
    assert found == dict.fromkeys(found, "gap")


def test_without_ttl_null_keys_and_null_times_still_never_match(spark: SparkSession) -> None:
    """No TTL to hide them: a null key or time matches nothing, on either side."""
    labels, features = _small(
        spark,
        [(None, at(10), 1), ("u", None, 2), ("u", at(10), 3)],
        [(None, at(1), 98), ("u", None, 99)],
    )
    result = as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="ts", prefix="f_")
    assert _sorted(result.select("label", "f_ts", "f_v").collect()) == [
        (1, None, None), (2, None, None), (3, None, None)
    ]


def test_without_ttl_any_older_feature_matches(spark: SparkSession) -> None:
    labels, features = _small(spark, [("u", at(1000), 1)], [("u", at(0), 5), ("u", at(1001), 6)])
    result = as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="ts",
                        prefix="f_")
    assert [tuple(r) for r in result.collect()] == [("u", at(1000), 1, at(0), 5)]


def test_zero_ttl_keeps_only_exact_timestamps(spark: SparkSession) -> None:
    labels, features = _small(spark, [("u", at(5), 1), ("u", at(6), 2)], [("u", at(5), 9)])
    result = as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="ts",
                        ttl=timedelta(0), prefix="f_")
    assert _sorted(result.select("label", "f_v").collect()) == [(1, 9), (2, None)]


def test_prefix_names_every_feature_column_in_feature_order(spark: SparkSession) -> None:
    labels = spark.createDataFrame([(1, at(5), "l")], "id INT, when TIMESTAMP, note STRING")
    features = spark.createDataFrame(
        [(2.0, at(4), 1, "x")], "score DOUBLE, seen_at TIMESTAMP, id INT, note STRING"
    )
    result = as_of_join(labels, features, keys=["id"], label_ts="when", feature_ts="seen_at",
                        prefix="feat_")
    assert result.columns == ["id", "when", "note", "feat_score", "feat_seen_at", "feat_note"]
    assert [tuple(r) for r in result.collect()] == [(1, at(5), "l", 2.0, at(4), "x")]


def test_output_schema_keeps_types_and_makes_columns_nullable(spark: SparkSession) -> None:
    labels = spark.range(3).select(
        "id", F.timestamp_seconds(F.col("id")).alias("ts"), F.lit("x").alias("tag")
    )
    features = spark.range(2).select(
        "id", F.timestamp_seconds(F.col("id")).alias("fts"), F.lit(1.5).alias("score")
    )
    result = as_of_join(labels, features, keys=["id"], label_ts="ts", feature_ts="fts")
    assert result.schema == T.StructType(
        [
            T.StructField("id", T.LongType(), True),
            T.StructField("ts", T.TimestampType(), True),
            T.StructField("tag", T.StringType(), True),
            T.StructField("fts", T.TimestampType(), True),
            T.StructField("score", T.DoubleType(), True),
        ]
    )
    assert sorted(tuple(r) for r in result.select("id", "score").collect()) == [
        (0, 1.5), (1, 1.5), (2, None)
    ]


def test_map_columns_break_ties_by_their_sorted_entries(spark: SparkSession) -> None:
    labels = spark.createDataFrame([("u", at(5))], "user STRING, ts TIMESTAMP")
    features = spark.createDataFrame(
        [("u", at(5), {"b": 0}), ("u", at(5), {"a": 1}), ("u", at(4), {"z": 9})],
        "user STRING, fts TIMESTAMP, m MAP<STRING, INT>",
    )
    # The winner comes first in one input order and last in the other: the order does not choose.
    reversed_features = spark.createDataFrame(list(reversed(features.collect())), features.schema)
    joined = [
        as_of_join(labels, rows, keys=["user"], label_ts="ts", feature_ts="fts", time_buckets=buckets)
        for rows in (features, reversed_features)
        for buckets in (None, 2)
    ]
    # [("b", 0)] is above [("a", 1)]; one job for all variants.
    assert [r["m"] for r in reduce(DataFrame.unionByName, joined).collect()] == [{"b": 0}] * 4


@pytest.mark.parametrize("buckets", [None, 2])
def test_maps_whose_keys_are_not_text_break_ties_in_any_input_order(
    spark: SparkSession, buckets: int | None
) -> None:
    # Spark's JSON text of such keys is the JVM object's: a binary key's address, and one
    # text for array('a,b') and array('a', 'b'), or for array(NULL) and array('null').
    labels = spark.createDataFrame([(1, at(5))], "k INT, ts TIMESTAMP")
    cases = [
        ([f"map(X'0{i}', 1)" for i in range(4)], "hex(map_keys(v)[0])", "03"),
        (["map(array('a', 'b'), 1)", "map(array('a,b'), 1)"], "map_keys(v)[0]", ["a,b"]),
        (["map(array('null'), 1)", "map(array(CAST(NULL AS STRING)), 1)"], "map_keys(v)[0]", ["null"]),
        (["map(named_struct('x', 'a', 'y', 'b'), 1)", "map(named_struct('x', 'a,b', 'y', ''), 1)"],
         "map_keys(v)[0].x", "a,b"),
    ]
    for values, shown, expected in cases:
        for order in (values, values[::-1]):
            rows = " UNION ALL ".join(f"SELECT 1 AS k, TIMESTAMP'2024-03-01 12:00:05' AS fts, {v} AS v"
                                      for v in order)
            older = "SELECT 1 AS k, TIMESTAMP'2024-03-01 12:00:00' AS fts, " + order[0] + " AS v"
            features = spark.sql(f"{older} UNION ALL {rows}")
            joined = as_of_join(labels, features, keys=["k"], label_ts="ts", feature_ts="fts",
                                time_buckets=buckets)
            got = [r[0] for r in joined.selectExpr(shown).collect()]
            assert got == [expected], (values, order)



def test_times_inside_a_map_break_ties_to_the_microsecond(spark: SparkSession) -> None:
    # Spark's JSON text of a time stops at the millisecond by default.
    labels = spark.createDataFrame([("u", at(5))], "user STRING, ts TIMESTAMP")
    rows = [("u", at(5), {"a": at(0).replace(microsecond=m)}, {"a": at(0).replace(microsecond=m)})
            for m in (1, 2)]
    schema = "user STRING, fts TIMESTAMP, m MAP<STRING, TIMESTAMP>, n MAP<STRING, TIMESTAMP_NTZ>"
    joined = [
        as_of_join(labels, spark.createDataFrame(order, schema).coalesce(1),
                   keys=["user"], label_ts="ts", feature_ts="fts")
        for order in (rows, rows[::-1])
    ]
    found = reduce(DataFrame.unionByName, joined).collect()
    assert [(r["m"]["a"].microsecond, r["n"]["a"].microsecond) for r in found] == [(2, 2)] * 2


def test_a_null_map_or_variant_is_the_smallest_on_a_tie(spark: SparkSession) -> None:
    labels = spark.createDataFrame([("u", at(5))], "user STRING, ts TIMESTAMP")
    features = spark.createDataFrame(
        [("u", at(5), None, None, (1, None)), ("u", at(5), {"a": 1}, None, (1, {"a": 1})),
         ("u", at(5), None, '{"b": 0}', (1, None))],
        "user STRING, fts TIMESTAMP, m MAP<STRING, INT>, j STRING, s STRUCT<x: INT, m: MAP<STRING, INT>>",
    ).withColumn("j", F.parse_json("j"))
    winners = [
        as_of_join(labels, features.select("user", "fts", *columns), keys=["user"], label_ts="ts",
                   feature_ts="fts").collect()[0]
        for columns in (["m"], ["j"], ["s"])
    ]
    assert winners[0]["m"] == {"a": 1}
    assert str(winners[1]["j"]) == '{"b":0}'
    assert winners[2]["s"] == (1, {"a": 1})


@pytest.mark.parametrize("buckets", [None, 2])
def test_ties_put_nan_above_numbers_and_compare_text_by_utf8_bytes(
    spark: SparkSession, buckets: int | None
) -> None:
    labels = spark.createDataFrame([("u", at(5))], "user STRING, ts TIMESTAMP")

    def winner(values: list[Any], kind: str) -> Any:
        # One older row, so that two buckets have something to carry.
        rows = [("u", at(0), values[0]), *[("u", at(5), v) for v in values]]
        features = spark.createDataFrame(rows, f"user STRING, fts TIMESTAMP, v {kind}")
        return as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="fts",
                          time_buckets=buckets).collect()[0]["v"]

    assert math.isnan(winner([1.0, float("nan"), float("inf"), None], "DOUBLE"))
    assert winner(["z", "\u00e9", "Z"], "STRING") == "\u00e9"
    # UTF-16 order (Java's String.compareTo) would put U+FFFF above U+10000; UTF-8 bytes do not.
    assert winner(["\uffff", "\U00010000"], "STRING") == "\U00010000"


@pytest.mark.parametrize("buckets", [None, 2])
def test_ties_compare_collated_text_by_utf8_bytes_in_any_input_order(
    spark: SparkSession, buckets: int | None
) -> None:
    # Under UTF8_LCASE "a" equals "A": sorted by the collation, the input order would choose.
    labels = spark.createDataFrame([("u", at(5))], "user STRING, ts TIMESTAMP")
    cases: list[tuple[str, list[Any], Any]] = [
        ("STRING COLLATE UTF8_LCASE", ["a", "A"], "a"),
        ("STRING COLLATE UTF8_LCASE", ["a", "B"], "a"),
        ("STRUCT<s: STRING COLLATE UTF8_LCASE>", [("a",), ("A",)], ("a",)),
        ("ARRAY<STRING COLLATE UTF8_LCASE>", [["A"], ["a"]], ["a"]),
    ]
    for kind, values, expected in cases:
        for order in (values, values[::-1]):
            rows = [("u", at(0), order[0]), *[("u", at(5), v) for v in order]]
            features = spark.createDataFrame(rows, f"user STRING, fts TIMESTAMP, v {kind}")
            got = as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="fts",
                             time_buckets=buckets).collect()[0]["v"]
            assert got == expected, (kind, order)


@pytest.mark.parametrize("kind", ["TIMESTAMP", "TIMESTAMP_NTZ"])
def test_a_ttl_is_an_exact_duration_across_a_clock_change(spark: SparkSession, kind: str) -> None:
    """In New York, 10 March 2024 has 23 hours and 3 November 2024 has 25: a ttl of one
    day reaches 24 hours back, not to the same time on the day before."""
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        labels = spark.sql(f"""SELECT * FROM VALUES
            ('spring', CAST('2024-03-10 12:00:00' AS {kind})), ('fall', CAST('2024-11-03 12:00:00' AS {kind}))
            AS t(k, ts)""")
        # Same wall-clock time the day before: 23 hours back in spring, 25 in the fall.
        features = labels.select("k", F.expr("ts - INTERVAL 1 DAY").alias("fts"))
        dates = labels.select("k", F.to_date("ts").alias("d"))
        date_features = dates.select("k", F.date_sub("d", 1).alias("fd"))

        def matched(left: DataFrame, right: DataFrame, ts: str, fts: str, ttl: timedelta) -> dict[str, bool]:
            joined = as_of_join(left, right, keys=["k"], label_ts=ts, feature_ts=fts, ttl=ttl)
            return {r["k"]: r[fts] is not None for r in joined.collect()}

        day, hours_23 = timedelta(days=1), timedelta(hours=23)
        if kind == "TIMESTAMP":
            assert matched(labels, features, "ts", "fts", day) == {"spring": True, "fall": False}
            assert matched(labels, features, "ts", "fts", hours_23) == {"spring": True, "fall": False}
        else:
            # Wall-clock times are a day apart whatever the zone does.
            assert matched(labels, features, "ts", "fts", day) == {"spring": True, "fall": True}
            assert matched(labels, features, "ts", "fts", hours_23) == {"spring": False, "fall": False}
        assert matched(dates, date_features, "d", "fd", day) == {"spring": True, "fall": True}
        if kind == "TIMESTAMP":
            # A date against a timestamp: midnight in New York, 35 hours before 12:00 on
            # 10 March and 37 before 12:00 on 3 November.
            hours_35 = timedelta(hours=35)
            before = labels.select("k", F.date_sub(F.to_date("ts"), 1).alias("fd"))
            assert matched(labels, before, "ts", "fd", hours_35) == {"spring": True, "fall": False}
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


def test_a_ttl_beyond_any_timestamp_span_is_no_limit(spark: SparkSession) -> None:
    labels, features = _small(spark, [("u", at(5), 1)], [("u", datetime(1000, 1, 1), 2)])
    found = {
        ttl: as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="ts", prefix="f_", ttl=ttl)
        .collect()[0]["f_v"]
        for ttl in (timedelta.max, timedelta(days=300_000))  # the feature is about 374,000 days old
    }
    assert found == {timedelta.max: 2, timedelta(days=300_000): None}

def test_plan_has_no_join_and_one_shuffle(spark: SparkSession,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    labels, features = _small(spark, [("u", at(5), 1)], [("u", at(4), 2)])
    as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="ts",
               prefix="f_").explain()
    plan = capsys.readouterr().out
    assert "Join" not in plan and "Cartesian" not in plan
    assert plan.count("Exchange") == 1, plan


def test_wide_features_are_prefiltered_by_default(spark: SparkSession,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Labels Spark can size (a local frame from Python data is an RDD, of unknown size).
    labels = spark.range(1).select(F.lit("u").alias("user"), F.lit(at(5)).alias("ts"))
    wide = spark.createDataFrame(
        [("u", at(t), *[float(t)] * 40) for t in (3, 4, 6)],
        ", ".join(["user STRING", "fts TIMESTAMP"] + [f"v{i} DOUBLE" for i in range(40)]),
    )
    joined = as_of_join(labels, wide, keys=["user"], label_ts="ts", feature_ts="fts")
    joined.explain()
    plan = capsys.readouterr().out
    assert "LeftSemi" in plan and "Broadcast" in plan, plan
    assert [(r["fts"], r["v39"]) for r in joined.collect()] == [(at(4), 4.0)]


def test_wide_features_are_not_prefiltered_when_the_labels_are_too_many_to_broadcast(
    spark: SparkSession, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = spark.range(1).select(F.lit("u").alias("user"), F.lit(at(5)).alias("ts"))
    wide = spark.createDataFrame(
        [("u", at(t), *[float(t)] * 40) for t in (3, 4, 6)],
        ", ".join(["user STRING", "fts TIMESTAMP"] + [f"v{i} DOUBLE" for i in range(40)]),
    )
    monkeypatch.setattr(pit, "PREFILTER_MAX_PAIR_BYTES", 8)
    joined = as_of_join(labels, wide, keys=["user"], label_ts="ts", feature_ts="fts")
    joined.explain()
    plan = capsys.readouterr().out
    assert "Join" not in plan and plan.count("Exchange") == 1, plan
    assert [(r["fts"], r["v39"]) for r in joined.collect()] == [(at(4), 4.0)]


def test_choosing_the_prefilter_runs_no_job(spark: SparkSession, tmp_path: Path) -> None:
    # Optimizing a plan over a Delta scan runs data-skipping jobs; the choice reads the analyzed plan.
    spark.range(20).select(F.col("id").cast("string").alias("user"), F.lit(at(5)).alias("ts"),
                           F.col("id").alias("n")).write.format("delta").save(str(tmp_path / "labels"))
    wide = spark.createDataFrame(
        [("4", at(t), *[float(t)] * 40) for t in (3, 4)],
        ", ".join(["user STRING", "fts TIMESTAMP"] + [f"v{i} DOUBLE" for i in range(40)]),
    )
    # The first sizing reads the table's state (its files), which running the query needs anyway.
    as_of_join(spark.read.format("delta").load(str(tmp_path / "labels")), wide, keys=["user"],
               label_ts="ts", feature_ts="fts")
    labels = spark.read.format("delta").load(str(tmp_path / "labels")).filter(F.col("n") > 3)
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("as_of_join_call", "as_of_join only builds a plan")
    try:
        joined = as_of_join(labels, wide, keys=["user"], label_ts="ts", feature_ts="fts")
        # The status store learns of a job from the listener bus, a little later: drain it first.
        spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()  # type: ignore[union-attr]
        assert tracker.getJobIdsForGroup("as_of_join_call") == []
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    assert pit._planned_bytes(labels.select("user", "ts")) is not None
    assert [(r["user"], r["v39"]) for r in joined.collect() if r["fts"] is not None] == [("4", 4.0)]


def test_unsized_or_streaming_labels_are_not_prefiltered(spark: SparkSession) -> None:
    assert pit._planned_bytes(spark.readStream.format("rate").load()) is None
    assert not pit._broadcastable(spark.createDataFrame([("u", at(5))], "user STRING, ts TIMESTAMP"))
    assert pit._broadcastable(spark.range(10))


def test_labels_too_big_for_the_drivers_heap_are_not_prefiltered(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pit._driver_heap(spark.range(1)) > 16 * 8000
    assert pit._broadcastable(spark.range(1000))  # 8000 bytes
    monkeypatch.setattr(pit, "_driver_heap", lambda df: 16 * 7999)
    assert not pit._broadcastable(spark.range(1000))


def test_names_match_regardless_of_case_as_spark_resolves_them(spark: SparkSession) -> None:
    labels = spark.createDataFrame([("u", at(5), 1)], "User STRING, TS TIMESTAMP, label INT")
    features = spark.createDataFrame([("u", at(4), 2), ("u", at(6), 3)], "USER STRING, Fts TIMESTAMP, v INT")
    joined = as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="FTS", prefix="f_")
    assert joined.columns == ["User", "TS", "label", "f_Fts", "f_v"]
    assert [tuple(r) for r in joined.collect()] == [("u", at(5), 1, at(4), 2)]
    with pytest.raises(ValueError, match=r"feature_ts='USER' is also one of the keys \['USER'\]"):
        as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="User", prefix="f_")
    repeated = r"got \['user', 'USER'\], which name the columns \['User', 'User'\]"
    with pytest.raises(ValueError, match=repeated):
        as_of_join(labels, features, keys=["user", "USER"], label_ts="ts", feature_ts="Fts", prefix="f_")
    twice = labels.select("*", F.col("User").alias("USER"))
    with pytest.raises(MissingColumnsError, match=r"differing only in case, \['User', 'USER'\]"):
        as_of_join(twice, features, keys=["user"], label_ts="ts", feature_ts="Fts", prefix="f_")
    by_set = as_of_join(labels, features, keys={"user"}, label_ts="ts", feature_ts="Fts", prefix="f_")
    assert by_set.columns == joined.columns
    for on in ("true", "TRUE", " True"):  # as Spark reads a boolean setting
        spark.conf.set("spark.sql.caseSensitive", on)
        try:
            missing = r"labels is missing column\(s\) \['user', 'ts'\]"
            with pytest.raises(MissingColumnsError, match=missing):
                as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="Fts", prefix="f_")
        finally:
            spark.conf.set("spark.sql.caseSensitive", "false")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keys": None}, "keys must be a list of column names; got None"),
        ({"keys": ["user", 1]}, "keys must be a list of column names"),
        ({"keys": ["user"], "label_ts": None}, "label_ts must be a column name; got None"),
        ({"keys": ["user"], "prefix": 7}, "prefix must be a string or None; got 7"),
    ],
)
def test_arguments_of_the_wrong_type_are_refused(spark: SparkSession, kwargs: dict[str, Any],
                                                 message: str) -> None:
    labels, features = _small(spark, [], [])
    arguments = {"label_ts": "ts", "feature_ts": "ts", "prefix": "f_", **kwargs}
    with pytest.raises(TypeError, match=message):
        as_of_join(labels, features, **arguments)


@pytest.mark.parametrize("prefilter", [False, True])
def test_columns_named_like_the_joins_own_work_columns(spark: SparkSession, prefilter: bool) -> None:
    # Every name the join uses for its work, as a key, a timestamp and a
    # feature column (one upper-cased: Spark matches names in any case).
    labels = spark.createDataFrame(
        [(1, 2, at(5), 0)], "__pit_key0 INT, __pit_found INT, __pit_ts TIMESTAMP, __pit_kind INT"
    )
    features = spark.createDataFrame(
        [(1, 2, at(t), t, t * 10) for t in (3, 4, 6)],
        "__pit_key0 INT, __pit_found INT, __pit_ts TIMESTAMP, __PIT_KEY1 INT, __pit_payload INT",
    )
    joined = as_of_join(labels, features, keys=["__pit_key0", "__pit_found"], label_ts="__pit_ts",
                        feature_ts="__pit_ts", prefix="f_", prefilter=prefilter)
    assert [tuple(r) for r in joined.collect()] == [(1, 2, at(5), 0, at(4), 4, 40)]


# --- argument errors -----------------------------------------------------------------------


def test_clashing_columns_without_prefix_are_named(spark: SparkSession) -> None:
    labels, features = _small(spark, [], [])
    with pytest.raises(ColumnClashError, match=r"\['ts'\]"):
        as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="ts")


def test_prefix_that_still_clashes_is_rejected(spark: SparkSession) -> None:
    labels = spark.createDataFrame([], "user STRING, ts TIMESTAMP, f_v INT")
    features = spark.createDataFrame([], "user STRING, fts TIMESTAMP, v INT")
    with pytest.raises(ColumnClashError, match="f_v"):
        as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="fts", prefix="f_")


def test_a_name_labels_repeats_is_named_as_its_own(spark: SparkSession) -> None:
    labels = spark.createDataFrame([], "user STRING, ts TIMESTAMP, x INT").select("user", "ts", "x", "x")
    features = spark.createDataFrame([], "user STRING, fts TIMESTAMP, v INT")
    with pytest.raises(ColumnClashError, match=r"labels has column\(s\) \['x'\] more than once"):
        as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="fts", prefix="f_")


def test_a_name_features_repeats_is_named_as_its_own(spark: SparkSession) -> None:
    labels = spark.createDataFrame([], "user STRING, ts TIMESTAMP")
    features = spark.createDataFrame([], "user STRING, fts TIMESTAMP, v INT")
    features = features.select("user", "user", "fts", "v")
    with pytest.raises(ColumnClashError, match=r"features has column\(s\) \['user'\] more than once"):
        as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="fts")


def test_missing_columns_list_expected_and_present(spark: SparkSession) -> None:
    labels, features = _small(spark, [], [])
    with pytest.raises(MissingColumnsError) as err:
        as_of_join(labels, features, keys=["user", "shop"], label_ts="event_ts", feature_ts="ts",
                   prefix="f_")
    message = str(err.value)
    assert "['shop', 'event_ts']" in message and "['user', 'ts', 'label']" in message
    with pytest.raises(MissingColumnsError, match="features.*'feature_ts'"):
        as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="feature_ts",
                   prefix="f_")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keys": [], "ttl": None}, "at least one key"),
        ({"keys": ["user"], "ttl": timedelta(seconds=-1)}, "negative"),
        ({"keys": ["user", "user"], "ttl": None}, "repeat"),
        ({"keys": ["user"], "ttl": None, "prefilter": "yes"}, "prefilter"),
        ({"keys": ["user"], "ttl": None, "time_buckets": 0}, "time_buckets must be a positive int"),
        ({"keys": ["user"], "ttl": None, "time_buckets": True}, "time_buckets must be a positive int"),
        ({"keys": ["user"], "ttl": None, "time_buckets": 2.5}, "time_buckets must be a positive int"),
        ({"keys": ["user", "ts"], "ttl": None}, r"label_ts='ts' is also one of the keys"),
    ],
)
def test_invalid_arguments(spark: SparkSession, kwargs: dict[str, Any], message: str) -> None:
    labels, features = _small(spark, [], [])
    with pytest.raises(ValueError, match=message):
        as_of_join(labels, features, label_ts="ts", feature_ts="ts", prefix="f_", **kwargs)


def test_a_ttl_that_is_not_a_timedelta_is_refused(spark: SparkSession) -> None:
    labels, features = _small(spark, [], [])
    with pytest.raises(TypeError, match="ttl must be a datetime.timedelta, got int"):
        as_of_join(labels, features, keys=["user"], label_ts="ts", feature_ts="ts", prefix="f_",
                   ttl=5)  # type: ignore[arg-type]


def test_times_must_be_times_and_keys_of_one_kind(spark: SparkSession) -> None:
    labels = spark.createDataFrame([("1", "2024-03-01 12:00:05", 1, at(5))],
                                   "user STRING, ts STRING, shop INT, lts TIMESTAMP")
    features = spark.createDataFrame([(1, at(4), 1)], "user INT, fts TIMESTAMP, shop BIGINT")
    with pytest.raises(AsOfJoinError, match=r"label_ts='ts' in labels must be a timestamp or date.*string"):
        as_of_join(labels, features, keys=["shop"], label_ts="ts", feature_ts="fts", prefix="f_")
    with pytest.raises(AsOfJoinError, match=r"key 'user' is string in labels but int in features"):
        as_of_join(labels, features, keys=["user"], label_ts="lts", feature_ts="fts", prefix="f_")
    # Numbers of different widths, and dates against timestamps, are fine.
    dated = features.withColumn("fts", F.to_date("fts"))
    joined = as_of_join(labels, dated, keys=["shop"], label_ts="lts", feature_ts="fts", prefix="f_")
    assert [r["f_fts"] for r in joined.collect()] == [at(0).date()]


@pytest.mark.parametrize(("buckets", "prefilter"), [(None, False), (4, False), (None, True)])
def test_a_label_date_sees_only_features_known_by_midnight_at_its_start(
    spark: SparkSession, buckets: int | None, prefilter: bool
) -> None:
    labels = spark.sql("SELECT * FROM VALUES ('a', DATE'2024-03-02'), ('b', DATE'2024-03-02'), "
                       "('c', DATE'2024-03-02') AS t(k, d)")
    features = spark.sql("""SELECT * FROM VALUES
        ('a', TIMESTAMP'2024-03-01 23:59:59.999999', 1), ('a', TIMESTAMP'2024-03-02 00:00:00.000001', 2),
        ('b', TIMESTAMP'2024-03-02 00:00:00', 3), ('b', TIMESTAMP'2024-03-02 12:00:00', 4),
        ('c', TIMESTAMP'2024-03-02 00:00:00.000001', 5)
        AS t(k, fts, v)""")
    joined = as_of_join(labels, features, keys=["k"], label_ts="d", feature_ts="fts",
                        time_buckets=buckets, prefilter=prefilter)
    # Later the same day is after the label's time, midnight is not.
    assert {r["k"]: r["v"] for r in joined.collect()} == {"a": 1, "b": 3, "c": None}


def test_streaming_inputs_are_refused_when_called(spark: SparkSession) -> None:
    stream = spark.readStream.format("rate").load().withColumnRenamed("value", "k")
    batch = spark.createDataFrame([(1, at(5))], "k BIGINT, timestamp TIMESTAMP")
    for labels, features, side in ((stream, batch, "labels"), (batch, stream, "features")):
        with pytest.raises(AsOfJoinError, match=rf"{side} is a streaming DataFrame; as_of_join joins batch"):
            as_of_join(labels, features, keys=["k"], label_ts="timestamp", feature_ts="timestamp",
                       prefix="f_")


def test_keys_match_whatever_their_nullability_or_number_width_and_maps_are_refused(
    spark: SparkSession,
) -> None:
    labels = spark.sql(
        "SELECT array(1, 2) AS k, named_struct('a', 1) AS s, TIMESTAMP'2024-01-01 12:00' AS ts"
    )
    features = spark.sql(
        "SELECT * FROM VALUES (array(1, 2), named_struct('a', 1), TIMESTAMP'2024-01-01 11:00', 5), "
        "(array(3, CAST(NULL AS INT)), named_struct('a', CAST(NULL AS INT)), TIMESTAMP'2024-01-01 11:00', 6) "
        "AS t(k, s, fts, v)"
    )
    assert labels.schema["k"].dataType != features.schema["k"].dataType  # element nullability only
    joined = as_of_join(labels, features, keys=["k", "s"], label_ts="ts", feature_ts="fts")
    assert [r["v"] for r in joined.collect()] == [5]
    # Nor does the width of numbers inside them, as in Spark's own joins; the labels keep their types.
    wider = features.selectExpr("CAST(k AS ARRAY<BIGINT>) AS k", "CAST(s AS STRUCT<a: DOUBLE>) AS s",
                                "fts", "v")
    joined = as_of_join(labels, wider, keys=["k", "s"], label_ts="ts", feature_ts="fts")
    assert [r["v"] for r in joined.collect()] == [5]
    assert joined.schema["k"].dataType == labels.schema["k"].dataType
    mapped = spark.sql("SELECT map('a', 1) AS k, TIMESTAMP'2024-01-01 12:00' AS ts")
    with pytest.raises(AsOfJoinError, match=r"key 'k' is map<string,int> in labels.*map or variant"):
        as_of_join(mapped, mapped.withColumnRenamed("ts", "fts"), keys=["k"], label_ts="ts", feature_ts="fts")
