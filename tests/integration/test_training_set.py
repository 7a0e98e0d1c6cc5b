"""lakeward training-set on small silver and gold tables written directly (no pipeline run)."""

from __future__ import annotations

import dataclasses
import os
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import gold, silver, tables, training_set
from lakeward.config import Settings
from lakeward.pit import as_of_join
from lakeward.splits import PARTS, group_split, leakage, temporal_split
from lakeward.tables import SUBJECT_COLUMN_PROPERTY
from lakeward.training_set import (
    CONTENT_HASH_PROPERTY,
    SPEC_PROPERTY,
    BuildSpec,
    TrainingSetError,
    assemble,
    build,
    content_hash,
    feature_columns,
    rebuild,
    stored_spec,
    table_name,
)
from tests.cli_process import lakeward
from tests.pipeline_checks import drop_table, vacuum_everything_old

pytestmark = pytest.mark.integration

START = date(2026, 1, 1)
USERS = [f"user{i:02d}" for i in range(12)]


def _write_orders(spark: SparkSession, settings: Settings, first_day: int, last_day: int) -> None:
    """Orders with event dates first_day..last_day, some arriving a day late."""
    spec = silver.silver_spec(settings, "order_placed")
    tables.ensure_table(spark, spec)
    rng = random.Random(first_day)
    rows = []
    for user in USERS:
        day = first_day + rng.randrange(4)
        while day <= last_day:
            event_ts = datetime(2026, 1, 1, rng.randrange(24), rng.randrange(60)) + timedelta(days=day)
            late = rng.choice([0, 0, 0, 1])
            arrival = min(event_ts.date() + timedelta(days=late), START + timedelta(days=last_day))
            values = {"event_id": f"{user}-{day}", "event_ts": event_ts, "event_date": event_ts.date(),
                      "user_key": user, "_arrival_date": arrival}
            rows.append(tuple(values.get(name) for name in spec.schema.fieldNames()))
            day += rng.choice([1, 3, 5, 9, 20, 40])
    tables.append(spark.createDataFrame(rows, spec.schema), spec.name)


def _write_features(
    spark: SparkSession, settings: Settings, first_day: int, last_day: int,
    gap: tuple[str, date, date] | None = None,
) -> None:
    """One feature row per user and day, known at midnight after the day.

    ``gap`` (user, first day, last day): that user has no rows on those days.
    """
    name = settings.table("gold_user_features")
    schema = T.StructType([
        T.StructField("user_key", T.StringType()),
        T.StructField("feature_date", T.DateType()),
        T.StructField("feature_ts", T.TimestampType()),
        *gold.feature_columns(settings.pipeline.feature_windows_days),
        T.StructField("feature_version", T.StringType()),
    ])
    tables.ensure_table(spark, tables.TableSpec(name, schema, subject_column="user_key"))
    days = spark.createDataFrame([(u,) for u in USERS], "user_key string").select(
        "user_key",
        F.explode(F.sequence(F.lit(START + timedelta(days=first_day)),
                             F.lit(START + timedelta(days=last_day)))).alias("feature_date"),
    )
    values = [
        ((F.dayofyear("feature_date") + F.length("user_key") * i) % 7).cast(f.dataType).alias(f.name)
        for i, f in enumerate(gold.feature_columns(settings.pipeline.feature_windows_days))
    ]
    rows = days.select(
        "user_key", "feature_date", F.to_timestamp(F.date_add("feature_date", 1)).alias("feature_ts"),
        *values, F.lit(settings.pipeline.feature_version).alias("feature_version"),
    )
    if gap is not None:
        user, first, last = gap
        rows = rows.filter(~((F.col("user_key") == user) & F.col("feature_date").between(first, last)))
    # An empty day range (last_day < first_day) leaves the table without rows.
    tables.append(rows.filter(F.lit(first_day <= last_day)), name)


def _oracle(orders: list[Row], features: list[Row], spec: BuildSpec) -> dict[str, tuple[object, ...]]:
    """Brute force, per label id: churned, then every column of the feature row it gets (all None
    without one), in the order of ``features``' columns but ``user_key``."""
    horizon = timedelta(days=spec.horizon_days)
    ttl = None if spec.ttl_days is None else timedelta(days=spec.ttl_days)
    observed_until = spec.observed_until.replace(tzinfo=None)
    order_times: dict[str, list[datetime]] = {}
    for order in orders:
        order_times.setdefault(order["user_key"], []).append(order["event_ts"])
    expected: dict[str, tuple[object, ...]] = {}
    for order in orders:
        t = order["event_ts"]
        if not t + horizon < observed_until:
            continue
        churned = int(not any(t < other <= t + horizon for other in order_times[order["user_key"]]))
        known = [f for f in features
                 if f["user_key"] == order["user_key"] and f["feature_ts"] <= t
                 and (ttl is None or t - ttl <= f["feature_ts"])]
        # One feature row per user and time here: the latest is the one.
        match = max(known, key=lambda f: f["feature_ts"]) if known else None
        values = [None if match is None else value for name, value in (match or features[0]).asDict().items()
                  if name != "user_key"]
        expected[order["event_id"]] = (churned, *values)
    return expected


def _write_edge_user(spark: SparkSession, settings: Settings, ttl: timedelta) -> tuple[str, str, datetime]:
    """A user with one feature row and two orders: exactly ``ttl`` after it, and a microsecond later.

    Returns the two label ids and the feature row's time.
    """
    user, known = "zz-edge", datetime(2026, 1, 22)
    at_bound, past_bound = known + ttl, known + ttl + timedelta(microseconds=1)
    orders = silver.silver_spec(settings, "order_placed").schema
    rows = [{"event_id": f"{user}-{n}", "event_ts": t, "event_date": t.date(), "user_key": user,
             "_arrival_date": t.date()} for n, t in enumerate((at_bound, past_bound))]
    tables.append(spark.createDataFrame([tuple(r.get(f) for f in orders.fieldNames()) for r in rows], orders),
                  settings.table("silver_orders"))
    name = settings.table("gold_user_features")
    features = tables.read(spark, name).schema
    row = {"user_key": user, "feature_date": known.date() - timedelta(days=1), "feature_ts": known,
           "feature_version": settings.pipeline.feature_version}
    tables.append(spark.createDataFrame([tuple(row.get(f) for f in features.fieldNames())], features), name)
    return f"{user}-0", f"{user}-1", known


def _inputs_at(spark: SparkSession, settings: Settings, spec: BuildSpec) -> tuple[DataFrame, DataFrame]:
    orders_name, features_name = settings.table("silver_orders"), settings.table("gold_user_features")
    orders = tables.read(spark, orders_name, version=spec.inputs[orders_name])
    features = tables.read(spark, features_name, version=spec.inputs[features_name])
    columns = ["user_key", "feature_date", "feature_ts", *feature_columns(settings), "feature_version"]
    return orders, features.select(*columns)


def test_build_records_versions_and_rebuilds_exactly(spark: SparkSession, fresh_settings: Settings) -> None:
    settings = fresh_settings
    _write_orders(spark, settings, 0, 79)
    # One user's features stop a day longer than the TTL before one of their orders,
    # so the TTL leaves it none (a longer TTL would not).
    ttl_days = settings.training_set.ttl_days
    assert ttl_days is not None
    later = tables.read(spark, settings.table("silver_orders")).filter(
        F.col("event_date") >= START + timedelta(days=20))
    gap_user, gap_day, gap_label = later.orderBy("event_date", "user_key").select(
        "user_key", "event_date", "event_id").first()
    _write_features(spark, settings, 0, 79, gap=(gap_user, gap_day - timedelta(days=ttl_days + 1), gap_day))
    at_bound, past_bound, edge_known = _write_edge_user(spark, settings, timedelta(days=ttl_days))
    orders_name, features_name = settings.table("silver_orders"), settings.table("gold_user_features")

    first = build(spark, settings)

    table = settings.table("ml_training_set")
    assert first.table == table
    assert first.version == tables.current_version(spark, table)
    assert first.spec.inputs == {orders_name: tables.current_version(spark, orders_name),
                                 features_name: tables.current_version(spark, features_name)}
    last_arrival = tables.read(spark, orders_name).agg(F.max("_arrival_date")).first()[0]
    lateness = timedelta(days=settings.pipeline.allowed_lateness_days)
    assert first.spec.observed_until == datetime.combine(
        last_arrival + timedelta(days=1) - lateness, datetime.min.time(), UTC)
    assert first.spec.split == "group" and first.spec.t1 is None
    assert first.spec.input_ids == {n: tables.table_id(spark, n) for n in (orders_name, features_name)}
    assert first.spec.feature_columns == tuple(feature_columns(settings))
    assert (first.spec.horizon_days, first.spec.ttl_days) == (
        settings.training_set.horizon_days, settings.training_set.ttl_days)

    written = tables.read(spark, table)
    assert written.columns == ["label_id", "user_key", "label_ts", "churned", "feature_date",
                               "feature_ts", *feature_columns(settings), "feature_version", "split"]
    orders, features = _inputs_at(spark, settings, first.spec)
    expected = assemble(orders, features, first.spec)
    assert_df_equality(written, expected, ignore_row_order=True, ignore_nullable=True)
    oracle = _oracle(orders.collect(), features.collect(), first.spec)
    taken = [c for c in features.columns if c != "user_key"]
    got = {r["label_id"]: (r["churned"], *[r[c] for c in taken]) for r in written.collect()}
    assert got == oracle
    # Each label is the order it was made from.
    placed = {o["event_id"]: (o["user_key"], o["event_ts"]) for o in orders.collect()}
    assert all((r["user_key"], r["label_ts"]) == placed[r["label_id"]] for r in written.collect())
    assert {values[0] for values in oracle.values()} == {0, 1}
    assert len({values[3:-1] for values in oracle.values()}) > 5, "the feature values tell rows apart"
    assert oracle[gap_label][1:3] == (None, None), "longer without features than the TTL: none"
    assert oracle[at_bound][1:3] == (edge_known.date() - timedelta(days=1), edge_known), "exactly ttl old: in"
    assert oracle[past_bound][1:3] == (None, None), "a microsecond older than the TTL: out"
    assert content_hash(written) == first.content_hash
    assert first.rows == written.count() == len(oracle) > 0
    assert all(first.split_rows[part] > 0 for part in PARTS)
    assert leakage(written, key="user_key") == []

    props = tables.properties(spark, table)
    assert BuildSpec.from_json(props[SPEC_PROPERTY]) == first.spec
    assert props[CONTENT_HASH_PROPERTY] == first.content_hash
    assert props[SUBJECT_COLUMN_PROPERTY] == "user_key"
    assert stored_spec(spark, settings) == first.spec

    ledger = tables.read(spark, settings.table("ops_training_sets"))
    rows = ledger.collect()
    assert {(r["input_table"], r["input_version"]) for r in rows} == set(first.spec.inputs.items())
    assert {(r["build_id"], r["name"], r["table_version"], r["rows"], r["content_hash"])
            for r in rows} == {(first.build_id, table, first.version, first.rows, first.content_hash)}
    assert BuildSpec.from_json(rows[0]["spec_json"]) == first.spec

    # New data arrives: the first training set can still be rebuilt exactly.
    _write_orders(spark, settings, 80, 99)
    _write_features(spark, settings, 80, 99)
    again = rebuild(spark, settings, first.spec)
    assert_df_equality(again, written, ignore_row_order=True, ignore_nullable=True)
    assert content_hash(again) == first.content_hash

    second = build(spark, settings)
    assert second.version == first.version + 1
    assert second.content_hash != first.content_hash and second.rows > first.rows
    assert all(second.spec.inputs[t] > v for t, v in first.spec.inputs.items())
    assert stored_spec(spark, settings, version=first.version) == first.spec
    assert stored_spec(spark, settings) == second.spec
    assert tables.read(spark, settings.table("ops_training_sets")).count() == 4
    assert content_hash(tables.read(spark, table, version=first.version)) == first.content_hash

    # The recorded feature columns are read, whatever the configuration says now.
    narrower = settings.pipeline.model_copy(update={"feature_windows_days": [7]})
    elsewhere = settings.model_copy(update={"pipeline": narrower})
    assert content_hash(rebuild(spark, elsewhere, first.spec)) == first.content_hash

    beyond = dataclasses.replace(first.spec, inputs={**first.spec.inputs, features_name: 999})
    no_such_version = rf"{features_name} has no version 999: its latest version is \d+"
    with pytest.raises(TrainingSetError, match=no_such_version):
        rebuild(spark, settings, beyond)

    # Overwrite gold and vacuum: the files of the recorded version are gone.
    tables.overwrite(tables.read(spark, features_name), features_name)
    vacuum_everything_old(spark, features_name)
    version = first.spec.inputs[features_name]
    vacuumed = rf"{features_name} version {version} is no longer available: .*removed \(VACUUM\)"
    with pytest.raises(TrainingSetError, match=vacuumed):
        rebuild(spark, settings, first.spec)

    # Orders dropped and written again: their versions start over, and are not the ones read.
    drop_table(spark, orders_name)
    _write_orders(spark, settings, 0, 79)
    _write_orders(spark, settings, 80, 99)
    # Without the id, time travel would read the new table's version of that number.
    assert tables.current_version(spark, orders_name) >= first.spec.inputs[orders_name]
    with pytest.raises(TrainingSetError, match=rf"{orders_name} .*dropped and created again"):
        rebuild(spark, settings, first.spec)


def _record_order_days(spark: SparkSession, settings: Settings, days: list[int]) -> None:
    """Silver's ledger rows saying the orders files of these arrival days were processed."""
    spec = silver.ledger_spec(settings)
    tables.ensure_table(spark, spec)
    rows = [{"source": "order_placed", "arrival_date": START + timedelta(days=d), "batch_id": f"b{d}",
             "rows_in": 0, "rows_quarantined": 0, "rows_duplicate": 0, "rows_written": 0} for d in days]
    tables.append(spark.createDataFrame(rows, spec.schema), spec.name)


def test_labels_end_before_an_orders_day_silver_has_not_processed(
    spark: SparkSession, fresh_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fresh_settings
    _write_orders(spark, settings, 0, 79)
    _write_features(spark, settings, 0, 79)
    # Day 40's file has not been processed, though later days have: its orders are unseen.
    _record_order_days(spark, settings, [d for d in range(80) if d != 40])
    lateness = timedelta(days=settings.pipeline.allowed_lateness_days)

    def end_of(day: int) -> datetime:
        return datetime.combine(START + timedelta(days=day + 1), datetime.min.time(), UTC) - lateness

    with caplog.at_level("WARNING", logger="lakeward.training_set"):
        gapped = build(spark, settings)
    assert gapped.spec.observed_until == end_of(39)
    assert f"arrival day {START + timedelta(days=40)}" in caplog.text
    horizon = timedelta(days=settings.training_set.horizon_days)
    label_times = [r["label_ts"] for r in tables.read(spark, gapped.table).collect()]
    assert label_times and max(label_times).replace(tzinfo=UTC) + horizon < end_of(39)

    # Day 40 comes with an empty file, and day 80 too (no orders on it): both count.
    _record_order_days(spark, settings, [40, 80])
    complete = build(spark, settings)
    assert complete.spec.observed_until == end_of(80)
    assert complete.rows > gapped.rows


def test_labels_end_where_the_features_end_when_gold_lags_behind_silver(
    spark: SparkSession, fresh_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Gold last ran on day 20, silver's orders run to day 79: a label after day 21 would get
    day 20's features (or none, past the TTL) as if nothing had happened since."""
    settings = fresh_settings
    _write_orders(spark, settings, 0, 79)
    _write_features(spark, settings, 0, 20)
    horizon = timedelta(days=settings.training_set.horizon_days)
    with caplog.at_level("WARNING", logger="lakeward.training_set"):
        result = build(spark, settings, split="group")
    assert f"runs to {START + timedelta(days=20)}" in caplog.text and "lakeward run gold" in caplog.text
    day_22 = datetime.combine(START + timedelta(days=22), datetime.min.time(), UTC)
    assert result.spec.observed_until == day_22 + horizon
    label_times = [r["label_ts"].replace(tzinfo=UTC) for r in tables.read(spark, result.table).collect()]
    # Day 21's labels are still served: they take day 20's row, as they would with gold up to date.
    assert label_times and max(label_times) < day_22
    assert any(t >= day_22 - timedelta(days=1) for t in label_times)


def test_temporal_build_named_table(spark: SparkSession, fresh_settings: Settings) -> None:
    settings = fresh_settings
    _write_orders(spark, settings, 0, 149)
    _write_features(spark, settings, 0, 149)

    computed = build(spark, settings, name="churn_temporal", split="temporal")
    assert computed.table == table_name(settings, "churn_temporal") != settings.table("ml_training_set")
    assert computed.spec.t1 is not None and computed.spec.t2 is not None
    assert all(computed.split_rows[p] > 0 for p in PARTS)
    written = tables.read(spark, computed.table)
    horizon = timedelta(days=30)
    assert leakage(written, ts="label_ts", horizon=horizon) == []
    bounds = {r["split"]: (r["lo"], r["hi"]) for r in written.groupBy("split").agg(
        F.min("label_ts").alias("lo"), F.max("label_ts").alias("hi")).collect()}
    t1, t2 = (t.replace(tzinfo=None) for t in (computed.spec.t1, computed.spec.t2))
    assert bounds["train"][1] + horizon < t1 <= bounds["validation"][0]
    assert bounds["validation"][1] + horizon < t2 <= bounds["test"][0]

    given = build(spark, settings, name="churn_temporal", split="temporal",
                  t1=date(2026, 3, 1), t2=date(2026, 4, 10))
    assert given.spec.t1 == datetime(2026, 3, 1, tzinfo=UTC)
    assert given.version == computed.version + 1
    assert_df_equality(rebuild(spark, settings, given.spec), tables.read(spark, given.table),
                       ignore_row_order=True, ignore_nullable=True)

    with pytest.raises(TrainingSetError, match="leaves validation empty"):
        build(spark, settings, split="temporal", t1=date(2026, 3, 1), t2=date(2026, 4, 1))
    # Bounds closer than the horizon cannot hold a validation label: refused before any read.
    with pytest.raises(TrainingSetError, match=r"t2 - t1 \(19 days, 0:00:00\) must be longer than the gap"):
        build(spark, settings, split="temporal", t1=date(2026, 3, 1), t2=date(2026, 3, 20))
    with pytest.raises(TrainingSetError, match="t1 and t2 apply to the temporal split only"):
        build(spark, settings, split="group", t1=date(2026, 3, 1), t2=date(2026, 4, 10))
    with pytest.raises(TrainingSetError, match="plain identifier"):
        build(spark, settings, name="ml.other")

    foreign = table_name(settings, "not_a_training_set")
    tables.overwrite(spark.range(3), foreign)
    with pytest.raises(TrainingSetError, match="exists and is not a training set"):
        build(spark, settings, name="not_a_training_set")
    assert tables.read(spark, foreign).count() == 3


def test_missing_or_empty_inputs(spark: SparkSession, fresh_settings: Settings) -> None:
    settings = fresh_settings
    with pytest.raises(TrainingSetError, match=r"silver.* does not exist; run the pipeline first"):
        build(spark, settings)
    _write_orders(spark, settings, 0, 49)
    _write_features(spark, settings, 0, -1)  # creates the table, no rows
    with pytest.raises(TrainingSetError, match=r"gold.*user_features \(version \d+\) is empty"):
        build(spark, settings)
    _write_features(spark, settings, 0, 49)
    with pytest.raises(TrainingSetError, match="labels run from .* temporal split needs more than 60"):
        build(spark, settings, split="temporal")
    assert not tables.exists(spark, settings.table("ml_training_set"))


def test_a_build_that_would_leak_writes_nothing(
    spark: SparkSession, fresh_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The join and the splits never give such rows; the build must still check for them.
    settings = fresh_settings
    _write_orders(spark, settings, 0, 149)
    _write_features(spark, settings, 0, 149)
    first = build(spark, settings)
    table = settings.table("ml_training_set")

    def from_the_future(*args: object, **kwargs: object) -> DataFrame:
        joined = as_of_join(*args, **kwargs)  # type: ignore[arg-type]
        return joined.withColumn("feature_ts", F.col("label_ts") + F.expr("INTERVAL 1 MICROSECOND"))

    monkeypatch.setattr(training_set, "as_of_join", from_the_future)
    with pytest.raises(TrainingSetError, match=r"training row\(s\) have feature_ts later than label_ts"):
        build(spark, settings)
    monkeypatch.undo()

    def one_user_in_two_parts(joined: DataFrame, **kwargs: object) -> DataFrame:
        split = group_split(joined, **kwargs)  # type: ignore[arg-type]
        first_label = F.col("label_id") == F.lit(joined.first()["label_id"])
        return split.withColumn("split", F.when(first_label, "test").otherwise("train"))

    monkeypatch.setattr(training_set, "group_split", one_user_in_two_parts)
    with pytest.raises(TrainingSetError, match=r"leakage between split parts: 1 value\(s\) of user_key"):
        build(spark, settings)
    monkeypatch.undo()

    def train_reaching_into_validation(joined: DataFrame, *, ts: str, t1: datetime, t2: datetime,
                                       gap: timedelta) -> DataFrame:
        split = temporal_split(joined, ts=ts, t1=t1, t2=t2, gap=gap)
        return split.unionByName(joined.filter(F.col(ts) < t1).withColumn("split", F.lit("train")))

    monkeypatch.setattr(training_set, "temporal_split", train_reaching_into_validation)
    with pytest.raises(TrainingSetError, match=r"leakage between split parts: \d+ train label\(s\) outside"):
        build(spark, settings, split="temporal")
    monkeypatch.undo()
    assert tables.current_version(spark, table) == first.version
    ledger = tables.read(spark, settings.table("ops_training_sets"))
    assert ledger.select("build_id").distinct().count() == 1


def test_cli_on_an_empty_data_root_fails_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "LAKEWARD_HOME": str(tmp_path / "home"), "LAKEWARD_ENV": "local"}
    usage = lakeward(env, "training-set", "--split", "group", "--t1", "2026-03-01", "--t2", "2026-04-01",
                     timeout=120)
    assert usage.returncode == 2
    assert usage.stderr.strip() == "lakeward: error: --t1 and --t2 apply to --split temporal only"
    close = lakeward(env, "training-set", "--split", "temporal", "--t1", "2026-03-01", "--t2", "2026-03-20",
                     timeout=120)
    assert (close.returncode, close.stderr.strip()) == (2, (
        "lakeward: error: --t1 2026-03-01 --t2 2026-03-20: t2 - t1 (19 days, 0:00:00) must be longer "
        "than the gap (30 days, 0:00:00): no validation label's window would end before t2 "
        "(training_set.horizon_days)"
    ))
    bad_name = lakeward(env, "training-set", "--name", "ml.x", timeout=120)
    assert bad_name.returncode == 2 and "expected a plain identifier" in bad_name.stderr

    result = lakeward(env, "training-set")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == ("lakeward: error: silver.orders does not exist; run the pipeline first "
                         "(lakeward run all --all-dates)")
    assert "Traceback" not in result.stderr
