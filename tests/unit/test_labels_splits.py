"""Churn labels against a brute-force oracle; splits and their leakage checks."""

import random
import re
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward.columns import MissingColumnsError
from lakeward.labels import churn_labels
from lakeward.splits import PARTS, LeakageError, assert_no_leakage, group_split, leakage, temporal_split

T0 = datetime(2026, 1, 1)
HORIZON = timedelta(seconds=50)


def _orders(seeds: range) -> list[tuple[str, str | None, datetime | None]]:
    rows: list[tuple[str, str | None, datetime | None]] = []
    for seed in seeds:
        rng = random.Random(seed)
        users = [f"s{seed}u{i}" for i in range(5)]
        for n in range(60):
            # Few distinct seconds, so ties and exact horizon boundaries are common.
            user: str | None = rng.choice(users)
            ts: datetime | None = T0 + timedelta(seconds=rng.randrange(0, 300, 5))
            # Now and then a null user or time: no label, and no one's next order.
            if rng.random() < 0.04:
                user = None
            elif rng.random() < 0.04:
                ts = None
            rows.append((f"s{seed}e{n}", user, ts))
    return rows


def _oracle(orders, observed_until):
    labels = {}
    known = [o for o in orders if o[1] is not None and o[2] is not None]
    for event_id, user, ts in known:
        if ts + HORIZON >= observed_until:
            continue
        later = [o for o in known if o[1] == user and ts < o[2] <= ts + HORIZON]
        labels[event_id] = (user, ts, 0 if later else 1)
    return labels


def test_churn_labels_match_oracle(spark: SparkSession) -> None:
    orders = _orders(range(20))
    observed_until = T0 + timedelta(seconds=250)
    df = spark.createDataFrame(orders, "event_id string, user_key string, event_ts timestamp")
    rows = churn_labels(df, horizon=HORIZON, observed_until=observed_until).collect()
    expected = _oracle(orders, observed_until)
    # As a sorted list, not a dict: two rows for one order must not pass as one.
    assert sorted((r["label_id"], r["user_key"], r["label_ts"], r["churned"]) for r in rows) == sorted(
        (label_id, *value) for label_id, value in expected.items()
    )
    assert {v[2] for v in expected.values()} == {0, 1}
    assert any(user is None for _, user, _ in orders) and any(ts is None for _, _, ts in orders)


def test_churn_window_is_open_at_t_and_closed_at_horizon(spark: SparkSession) -> None:
    rows = [("a", "u", T0), ("b", "u", T0), ("c", "u", T0 + HORIZON),
            ("x", "v", T0), ("y", "v", T0 + HORIZON + timedelta(seconds=1)),
            ("p", "w", T0), ("q", "w", T0)]  # two orders at one instant: neither is the other's next
    df = spark.createDataFrame(rows, "event_id string, user_key string, event_ts timestamp")
    got = {r["label_id"]: r["churned"]
           for r in churn_labels(df, horizon=HORIZON, observed_until=T0 + HORIZON * 3).collect()}
    assert got == {"a": 0, "b": 0, "c": 1, "x": 1, "y": 1, "p": 1, "q": 1}
    with pytest.raises(ValueError, match="horizon must be positive, got 0:00:00"):
        churn_labels(df, horizon=timedelta(0), observed_until=T0)


def test_a_window_ending_at_observed_until_is_censored(spark: SparkSession) -> None:
    # observed_until is an exclusive end, and the window (t, t + horizon]
    # includes its end: an order at observed_until would fall in it unseen.
    end = T0 + HORIZON * 2
    rows = [("at", "u", end - HORIZON), ("before", "v", end - HORIZON - timedelta(microseconds=1))]
    df = spark.createDataFrame(rows, "event_id string, user_key string, event_ts timestamp")
    got = [r["label_id"] for r in churn_labels(df, horizon=HORIZON, observed_until=end).collect()]
    assert got == ["before"]


def test_temporal_split_boundaries_and_gap(spark: SparkSession) -> None:
    gap = timedelta(days=30)
    t1, t2 = T0 + timedelta(days=100), T0 + timedelta(days=200)
    stamps = {
        "train_last": t1 - gap - timedelta(seconds=1),
        "gap_before_validation": t1 - gap,
        "validation_first": t1,
        "validation_last": t2 - gap - timedelta(seconds=1),
        "gap_before_test": t2 - gap,
        "test_first": t2,
    }
    df = spark.createDataFrame(list(stamps.items()), "name string, label_ts timestamp")
    got = {r["name"]: r["split"] for r in temporal_split(df, ts="label_ts", t1=t1, t2=t2, gap=gap).collect()}
    assert got == {"train_last": "train", "validation_first": "validation",
                   "validation_last": "validation", "test_first": "test"}
    split = temporal_split(df, ts="label_ts", t1=t1, t2=t2, gap=gap)
    assert leakage(split, ts="label_ts", horizon=gap) == []
    naive = temporal_split(df, ts="label_ts", t1=t1, t2=t2, gap=timedelta(0))
    problems = leakage(naive, ts="label_ts", horizon=gap)
    assert len(problems) == 2 and "train label windows reach" in problems[0]
    with pytest.raises(LeakageError):
        assert_no_leakage(naive, ts="label_ts", horizon=gap)
    # With the bounds, the labels the gap should have dropped are named as outside their part.
    assert [p for p in leakage(naive, ts="label_ts", horizon=gap, t1=t1, t2=t2) if "outside" in p] == [
        f"1 train label(s) outside the part's range (windows ending before t1={t1})",
        f"1 validation label(s) outside the part's range (times from t1={t1} "
        f"and windows ending before t2={t2})",
    ]


def _part(ts: datetime | None, t1: datetime, t2: datetime, gap: timedelta) -> str | None:
    """The part a label at ``ts`` belongs to, by the rules of the docstring; None: dropped."""
    if ts is None:
        return None
    if ts + gap < t1:
        return "train"
    if t1 <= ts and ts + gap < t2:
        return "validation"
    return "test" if ts >= t2 else None


_WINDOW_LEAK = re.compile(r"(\w+) label windows reach .+, not before the first (\w+) label at ")


def _window_leaks(rows: list[tuple[int, str, datetime | None]], horizon: timedelta) -> set[tuple[str, str]]:
    """Pairs of neighbouring non-empty parts where some label window of the earlier reaches a later label."""
    timed = {part: [ts for _, p, ts in rows if p == part and ts is not None] for part in PARTS}
    present = [part for part in PARTS if timed[part]]
    return {
        (earlier, later)
        for earlier, later in zip(present, present[1:], strict=False)
        if any(a + horizon >= b for a in timed[earlier] for b in timed[later])
    }


@pytest.mark.parametrize("seed", range(4))
def test_temporal_split_and_its_leakage_check_match_an_oracle(spark: SparkSession, seed: int) -> None:
    rng = random.Random(seed)
    gap = rng.choice([timedelta(hours=1), timedelta(days=1), timedelta(days=30)])
    t1 = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(10_000))
    t2 = t1 + gap + timedelta(microseconds=1) + gap * rng.random() * 3
    # Every bound and the instants a microsecond either side of it, then times around them.
    tick = timedelta(microseconds=1)
    edges = [edge + d for edge in (t1, t2, t1 - gap, t2 - gap) for d in (-tick, timedelta(0), tick)]
    spread = [t1 - 2 * gap + (t2 - t1 + 3 * gap) * rng.random() for _ in range(60)]
    stamps: list[datetime | None] = [*edges, *edges[:3], *spread, None, None]
    df = spark.createDataFrame(list(enumerate(stamps)), "id int, label_ts timestamp")

    split = temporal_split(df, ts="label_ts", t1=t1, t2=t2, gap=gap)
    got = sorted((r["id"], r["split"]) for r in split.collect())
    expected = sorted((i, part) for i, ts in enumerate(stamps) if (part := _part(ts, t1, t2, gap)))
    assert got == expected
    assert {part for _, part in expected} == set(PARTS)

    # Labels put in parts at random: the check names exactly the labels and the windows that do not fit.
    assigned = [
        (i, rng.choice([*PARTS, _part(ts, t1, t2, gap) or "test"]), ts) for i, ts in enumerate(stamps)
    ]
    frame = spark.createDataFrame(assigned, "id int, split string, label_ts timestamp")
    for horizon in (gap, timedelta(0)):
        problems = leakage(frame, ts="label_ts", horizon=horizon)
        reported = {match.groups() for p in problems if (match := _WINDOW_LEAK.match(p))}
        assert len(reported) == len(problems), problems
        assert reported == _window_leaks(assigned, horizon), (horizon, problems)
    outside = Counter(part for _, part, ts in assigned if part != _part(ts, t1, t2, gap))
    bounded = [p for p in leakage(frame, ts="label_ts", horizon=gap, t1=t1, t2=t2) if "outside" in p]
    assert [int(p.split(" ")[0]) for p in bounded] == [outside[part] for part in PARTS if outside[part]]
    assert [p.split(" ")[1] for p in bounded] == [part for part in PARTS if outside[part]]


def test_leakage_with_the_bounds_sees_a_window_crossing_t1_before_any_validation_label(
    spark: SparkSession,
) -> None:
    gap = timedelta(days=30)
    t1, t2 = T0 + timedelta(days=100), T0 + timedelta(days=200)
    rows = [
        ("train", t1 - gap - timedelta(seconds=1)),  # fits
        ("train", t1 - gap),                         # its window ends at t1: crosses
        ("validation", t1 + timedelta(days=60)),     # fits; the first validation label, late
        ("validation", t2 - timedelta(days=1)),      # its window reaches into test
        ("test", t2 - timedelta(seconds=1)),         # before t2
        ("test", None),                              # no time
    ]
    df = spark.createDataFrame(rows, "split string, label_ts timestamp")
    # Compared part with part, the crossing train window ends before the first validation label.
    assert [p for p in leakage(df, ts="label_ts", horizon=gap) if p.startswith("train")] == []
    outside = [p for p in leakage(df, ts="label_ts", horizon=gap, t1=t1, t2=t2) if "outside" in p]
    assert outside == [
        f"1 train label(s) outside the part's range (windows ending before t1={t1})",
        f"1 validation label(s) outside the part's range (times from t1={t1} "
        f"and windows ending before t2={t2})",
        f"2 test label(s) outside the part's range (times from t2={t2})",
    ]
    with pytest.raises(ValueError, match="give t1 and t2 together, and with ts and horizon"):
        leakage(df, key="user_key", t1=t1, t2=t2)
    with pytest.raises(ValueError, match="nothing to check: give key"):
        leakage(df)
    with pytest.raises(ValueError, match="nothing to check: give key"):
        leakage(df, t1=t1, t2=t2)



def test_a_row_in_no_part_is_reported(spark: SparkSession) -> None:
    rows = [("u1", "train", T0), ("u2", "bogus", T0), ("u3", None, T0),
            ("u4", "test", T0 + timedelta(days=9))]
    df = spark.createDataFrame(rows, "user string, split string, label_ts timestamp")
    expected = "split value(s) 'bogus', None are not one of train, validation, test"
    assert leakage(df, key="user") == [expected]
    assert leakage(df, ts="label_ts", horizon=timedelta(days=1)) == [expected]
    assert leakage(df.filter(F.col("split").isin("train", "test")), key="user", ts="label_ts",
                   horizon=timedelta(0)) == []


def test_split_arguments_that_cannot_give_a_leakage_safe_split_are_refused(spark: SparkSession) -> None:
    df = spark.createDataFrame([(T0,)], "label_ts timestamp")
    t1, t2, gap = T0, T0 + timedelta(days=30), timedelta(days=30)
    with pytest.raises(ValueError, match=r"t2 - t1 \(30 days, 0:00:00\) must be longer than the gap"):
        temporal_split(df, ts="label_ts", t1=t1, t2=t2, gap=gap)
    with pytest.raises(ValueError, match="both have a time zone or both have none"):
        temporal_split(df, ts="label_ts", t1=t1.replace(tzinfo=UTC), t2=T0 + timedelta(days=90), gap=gap)
    with pytest.raises(TypeError, match="gap must be a datetime.timedelta, got int 30"):
        temporal_split(df, ts="label_ts", t1=t1, t2=T0 + timedelta(days=90), gap=30)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="t1 must be a datetime or a date, got str"):
        temporal_split(df, ts="label_ts", t1="2026-01-01", t2=t2, gap=gap)  # type: ignore[arg-type]
    split = temporal_split(df, ts="label_ts", t1=t1, t2=T0 + timedelta(days=61), gap=gap)
    for only_one in ({"ts": "label_ts"}, {"horizon": gap}):
        with pytest.raises(ValueError, match="give ts and horizon together"):
            leakage(split, **only_one)  # type: ignore[arg-type]


def test_split_and_label_arguments_of_the_wrong_kind_are_refused_before_spark_runs(
    spark: SparkSession,
) -> None:
    df = spark.createDataFrame([("u", T0, "2026-01-01")], "user_key string, label_ts timestamp, text string")
    for fractions in ((float("nan"), 0.5, 0.5), (0.7, float("nan"), 0.3), (float("inf"), 0.0, 0.0)):
        with pytest.raises(ValueError, match="three non-negative fractions summing to 1"):
            group_split(df, key="user_key", fractions=fractions)
    mapped = df.withColumn("m", F.create_map(F.lit("a"), F.lit(1)))
    with pytest.raises(TypeError, match=r"key='m' is map<string,int>; a group key of a map"):
        group_split(mapped, key="m")
    split = df.withColumn("split", F.lit("train"))
    # Without t1 and t2 too: a negative horizon would hide a window crossing into the next part.
    with pytest.raises(ValueError, match=r"horizon must not be negative, got -30 days"):
        leakage(split, ts="label_ts", horizon=timedelta(days=-30))
    with pytest.raises(TypeError, match="horizon must be a datetime.timedelta, got int 30"):
        leakage(split, ts="label_ts", horizon=30)  # type: ignore[arg-type]
    # Text would be parsed as a time, and fail on the first row that is not one.
    with pytest.raises(TypeError, match=r"ts='text' in split must be a timestamp or date column; it is "):
        leakage(split, ts="text", horizon=HORIZON)
    with pytest.raises(TypeError, match=r"ts='text' in labels must be a timestamp or date column"):
        temporal_split(df, ts="text", t1=T0, t2=T0 + 3 * HORIZON, gap=HORIZON)
    orders = spark.createDataFrame([("e", "u", T0)], "event_id string, user_key string, event_ts timestamp")
    with pytest.raises(TypeError, match="horizon must be a datetime.timedelta, got int 30"):
        churn_labels(orders, horizon=30, observed_until=T0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="observed_until must be a datetime or a date, got str"):
        churn_labels(orders, horizon=HORIZON, observed_until="2026-02-01")  # type: ignore[arg-type]
    wall_clock = orders.withColumn("event_ts", F.col("event_ts").cast("timestamp_ntz"))
    with pytest.raises(TypeError, match="event_ts in orders must be a timestamp column; it is timestamp_ntz"):
        churn_labels(wall_clock, horizon=HORIZON, observed_until=T0)


def test_leakage_compares_dates_and_skips_parts_without_times(spark: SparkSession) -> None:
    days = [("a", date(2024, 1, 1)), ("b", date(2024, 1, 20)), ("c", date(2024, 2, 10))]
    df = spark.createDataFrame(days, "name string, label_ts date")
    split = temporal_split(df, ts="label_ts", t1=datetime(2024, 1, 15), t2=datetime(2024, 2, 1),
                           gap=timedelta(days=5))
    assert leakage(split, ts="label_ts", horizon=timedelta(days=5)) == []
    # With 30 days, 2024-01-01 reaches past 2024-01-20 and 2024-01-20 past 2024-02-10.
    assert leakage(split, ts="label_ts", horizon=timedelta(days=30)) == [
        "train label windows reach 2024-01-31 00:00:00 UTC, not before the first validation label at "
        "2024-01-20 00:00:00 UTC",
        "validation label windows reach 2024-02-19 00:00:00 UTC, not before the first test label at "
        "2024-02-10 00:00:00 UTC",
    ]
    untimed = spark.createDataFrame(
        [("train", T0), ("validation", None), ("test", T0 + timedelta(days=1))],
        "split string, label_ts timestamp",
    )
    assert leakage(untimed, ts="label_ts", horizon=timedelta(days=1)) == [
        f"train label windows reach {T0 + timedelta(days=1)} UTC, not before the first test label at "
        f"{T0 + timedelta(days=1)} UTC"
    ]

def test_group_split_keeps_each_user_in_one_part(spark: SparkSession) -> None:
    df = spark.range(4000).select(
        (F.col("id") % 500).cast("string").alias("user_key"), F.col("id").alias("label_id")
    )
    fractions = (0.5, 0.3, 0.2)  # unequal, so that swapping two parts shows
    split = group_split(df, key="user_key", fractions=fractions, seed=3)
    assert leakage(split, key="user_key") == []
    users = dict(split.groupBy("split").agg(F.countDistinct("user_key")).collect())
    assert set(users) == {"train", "validation", "test"} and sum(users.values()) == 500
    for part, fraction in zip(PARTS, fractions, strict=True):
        # Within about four standard deviations of a binomial count of 500 users.
        assert abs(users[part] - 500 * fraction) <= 45, users
    again = group_split(df, key="user_key", fractions=fractions, seed=3)
    assert split.exceptAll(again).count() == 0
    other_seed = group_split(df, key="user_key", fractions=fractions, seed=4)
    moved = split.join(other_seed.withColumnRenamed("split", "other"), ["user_key", "label_id"]).filter(
        F.col("split") != F.col("other")
    )
    assert moved.select("user_key").distinct().count() > 100
    shared = df.withColumn("split", F.when(F.col("label_id") % 3 == 0, "train").otherwise("test"))
    assert "appear in more than one part" in leakage(shared, key="user_key")[0]
    with pytest.raises(ValueError, match=r"fractions summing to 1, got \(0\.5, 0\.2, 0\.2\)"):
        group_split(df, key="user_key", fractions=(0.5, 0.2, 0.2))


def test_a_missing_column_is_named_with_the_columns_there_are(spark: SparkSession) -> None:
    df = spark.createDataFrame([("e1", "u1", T0)], "label_id string, user_id string, ts timestamp")
    calls = {
        "churn_labels": lambda: churn_labels(df, horizon=HORIZON, observed_until=T0),
        "group_split": lambda: group_split(df, key="user_key"),
        "temporal_split": lambda: temporal_split(df, ts="label_ts", t1=T0, t2=T0 + 3 * HORIZON, gap=HORIZON),
        "leakage": lambda: leakage(df, key="user_id"),
    }
    missing = {"churn_labels": "['event_id', 'user_key', 'event_ts']", "group_split": "['user_key']",
               "temporal_split": "['label_ts']", "leakage": "['split']"}
    for name, call in calls.items():
        with pytest.raises(MissingColumnsError, match=r"missing column\(s\)") as caught:
            call()
        message = str(caught.value)
        assert missing[name] in message and "['label_id', 'user_id', 'ts']" in message, (name, message)


def test_names_match_regardless_of_case_as_spark_resolves_them(spark: SparkSession) -> None:
    gap = timedelta(days=30)
    t1, t2 = T0 + timedelta(days=100), T0 + timedelta(days=200)
    orders = spark.createDataFrame(
        [("e1", "u1", T0), ("e2", "u1", T0 + timedelta(days=10)), ("e3", "u2", T0 + timedelta(days=150))],
        "Event_ID string, USER_KEY string, Event_Ts timestamp",
    )
    labels = churn_labels(orders, horizon=gap, observed_until=T0 + timedelta(days=400))
    assert labels.columns == ["label_id", "user_key", "label_ts", "churned"]
    assert sorted(tuple(r) for r in labels.collect()) == [
        ("e1", "u1", T0, 0),
        ("e2", "u1", T0 + timedelta(days=10), 1),
        ("e3", "u2", T0 + timedelta(days=150), 1),
    ]
    spelt = labels.withColumnsRenamed({"user_key": "User_Key", "label_ts": "LABEL_TS"})
    by_time = temporal_split(spelt, ts="label_ts", t1=t1, t2=t2, gap=gap)
    parts = sorted((r["label_id"], r["split"]) for r in by_time.collect())
    assert parts == [("e1", "train"), ("e2", "train"), ("e3", "validation")]
    assert leakage(group_split(spelt, key="user_key", seed=1), key="USER_KEY") == []
    leaky = spelt.withColumn("Split", F.when(F.col("label_id") == "e2", "test").otherwise("train"))
    found = leakage(leaky, key="USER_KEY", ts="label_ts", horizon=gap)
    assert "1 value(s) of User_Key appear in more than one part" in found
    # A dot in a name is part of it, not a struct field.
    dotted = leaky.withColumnsRenamed({"User_Key": "user.key", "LABEL_TS": "label.ts", "Split": "split"})
    assert leakage(dotted, key="user.key", ts="label.ts", horizon=gap) == [
        problem.replace("User_Key", "user.key") for problem in found
    ]
    dotted_split = temporal_split(dotted.drop("split"), ts="label.ts", t1=t1, t2=t2, gap=gap)
    assert leakage(group_split(dotted_split, key="user.key"), key="user.key") == []
    assert dotted_split.count() == 3
    twice = spelt.select("*", F.col("LABEL_TS").alias("label_TS"))
    with pytest.raises(MissingColumnsError, match=r"differing only in case, \['LABEL_TS', 'label_TS'\]"):
        temporal_split(twice, ts="label_ts", t1=t1, t2=t2, gap=gap)
    # One of them spelt as given is no less ambiguous to Spark.
    exact = spelt.select("*", F.col("LABEL_TS").alias("label_ts"))
    with pytest.raises(MissingColumnsError, match=r"differing only in case, \['LABEL_TS', 'label_ts'\]"):
        temporal_split(exact, ts="label_ts", t1=t1, t2=t2, gap=gap)
    spark.conf.set("spark.sql.caseSensitive", "true")
    try:
        with pytest.raises(MissingColumnsError, match=r"labels is missing column\(s\) \['label_ts'\]"):
            temporal_split(spelt, ts="label_ts", t1=t1, t2=t2, gap=gap)
        with pytest.raises(MissingColumnsError, match=r"orders is missing column\(s\) \['event_id'"):
            churn_labels(orders, horizon=gap, observed_until=T0 + timedelta(days=400))
    finally:
        spark.conf.set("spark.sql.caseSensitive", "false")


def test_bounds_without_a_time_zone_are_utc_whatever_the_process_time_zone(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PySpark reads a naive datetime in the process's time zone: in Berlin, an hour early.
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        t1, t2, gap = datetime(2026, 3, 1), datetime(2026, 5, 1), timedelta(days=30)
        half_hour = timedelta(minutes=30)
        stamps = {"before_t1": t1 - half_hour, "at_t1": t1, "train_edge": t1 - gap - half_hour,
                  "gap_edge": t1 - gap + half_hour}
        rows = [(name, at.replace(tzinfo=UTC)) for name, at in stamps.items()]
        df = spark.createDataFrame(rows, "name string, label_ts timestamp")
        split = temporal_split(df, ts="label_ts", t1=t1, t2=t2, gap=gap)
        got = {r["name"]: r["split"] for r in split.collect()}
        assert got == {"at_t1": "validation", "train_edge": "train"}
        assert leakage(df.withColumn("split", F.lit("train")).where(F.col("name") == "train_edge"),
                       ts="label_ts", horizon=gap, t1=t1, t2=t2) == []

        orders = spark.createDataFrame([("o", "u", datetime(2026, 1, 1, tzinfo=UTC))],
                                       "event_id string, user_key string, event_ts timestamp")
        labelled = churn_labels(orders, horizon=gap, observed_until=datetime(2026, 1, 31, 0, 30))
        assert labelled.count() == 1  # the window ends at 00:00 UTC, before 00:30 UTC
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_horizon_is_an_exact_duration_across_a_clock_change(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spark adds "30 days" on the session zone's calendar: 719 hours across New York's
    # spring-forward. The label window (t, t + 30 days] is 720 hours.
    horizon = timedelta(days=30)
    t = datetime(2024, 3, 1, 17, tzinfo=UTC)
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        orders = spark.createDataFrame(
            [("a", "u", t), ("b", "u", t + timedelta(hours=719, minutes=45))],
            "event_id string, user_key string, event_ts timestamp",
        )
        short_of_the_window = t + timedelta(hours=719, minutes=30)
        assert churn_labels(orders, horizon=horizon, observed_until=short_of_the_window).count() == 0
        labelled = churn_labels(orders, horizon=horizon, observed_until=t + timedelta(days=90))
        assert {r["label_id"]: r["churned"] for r in labelled.collect()}["a"] == 0  # b came within 720 h

        # a's outcome is decided by b, after t1: a is no train label.
        t1, t2 = short_of_the_window, short_of_the_window + timedelta(days=40)
        split = temporal_split(labelled, ts="label_ts", t1=t1, t2=t2, gap=horizon)
        assert {r["label_id"]: r["split"] for r in split.collect()} == {"b": "validation"}
        a_in_train = F.when(F.col("label_id") == "a", "train").otherwise("validation")
        leaking = labelled.withColumn("split", a_in_train)
        found = leakage(leaking, ts="label_ts", horizon=horizon, t1=t1, t2=t2)
        assert found == [
            "1 train label(s) outside the part's range "
            f"(windows ending before t1={t1})",
            "train label windows reach 2024-03-31 17:00:00 UTC, not before the first validation label "
            "at 2024-03-31 16:45:00 UTC",
        ]
        # Python's clock repeats an hour when New York's clocks go back: the check does not use it.
        monkeypatch.setenv("TZ", "America/New_York")
        time.tzset()
        fall = datetime(2024, 11, 3, 5, 10, tzinfo=UTC)  # 01:10 EDT; 05:30Z is 01:30 EST
        back = spark.createDataFrame([("train", fall), ("validation", fall + timedelta(minutes=20))],
                                     "split string, label_ts timestamp")
        assert leakage(back, ts="label_ts", horizon=timedelta(hours=1)) == [
            "train label windows reach 2024-11-03 06:10:00 UTC, not before the first validation label "
            "at 2024-11-03 05:30:00 UTC"
        ]
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
        monkeypatch.undo()
        time.tzset()
