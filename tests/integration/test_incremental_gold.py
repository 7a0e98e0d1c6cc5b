"""Incremental gold equals a full recompute and the brute-force oracle, whatever the arrival order.

Silver is written directly, in chunks of arrival days taken in a shuffled
order or in order, with late events, events dated after their arrival day,
events sent again on an earlier day (whose arrival moves back when that day
comes later), repeated runs and one run that dies before its ledger write.
After every chunk the incremental refresh runs, and both gold tables must
then equal the brute-force oracles of ``tests/pipeline_checks.py`` on what
silver holds. At the end
they must equal ``--full`` on the same silver versions.
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakeward import gold, incremental, silver, tables
from lakeward.config import Settings
from tests.conftest import isolated
from tests.pipeline_checks import daily_oracle, features_oracle, vacuum_everything_old
from tests.unit.test_gold import WINDOWS

pytestmark = pytest.mark.integration

START = date(2026, 2, 1)
DAYS = 45
# Days from event to arrival. -1: dated the day after it arrived, as silver
# accepts within its future tolerance; such an event is known on its own date.
LATENESS = (-1, 0, 0, 0, 0, 1, 2, 3, 7)


def _settings(base: Settings, root: Path) -> Settings:
    settings = isolated(base, root)
    rules = settings.pipeline.model_copy(update={"feature_windows_days": WINDOWS, "feature_version": "vT"})
    return settings.model_copy(update={"pipeline": rules})


def _events(seed: int) -> tuple[list, list, list]:
    rng = random.Random(seed)
    users = [f"u{seed}_{i}" for i in range(6)]

    def when() -> tuple[date, date]:
        event = START + timedelta(days=rng.randrange(DAYS))
        return event, event + timedelta(days=rng.choice(LATENESS))

    orders = [(rng.choice(users), *when(), Decimal(rng.randrange(100, 5000)) / 100) for _ in range(70)]
    # Silver lets a missing delivery time or rating through: a null is no value.
    deliveries = [(rng.choice(users), *when(), 30, rng.choice([20, 30, 31, 60, None])) for _ in range(50)]
    ratings = [(rng.choice(users), *when(), rng.choice([1, 2, 3, 4, 5, None])) for _ in range(35)]
    return orders, deliveries, ratings


def _silver_row(i: int, event: tuple, columns: dict) -> dict:
    user, event_date, arrival = event[:3]
    ts = datetime(event_date.year, event_date.month, event_date.day, 12) + timedelta(minutes=i)
    return {"event_id": f"e{i}", "event_ts": ts, "event_date": event_date, "user_key": user,
            **columns, "_arrival_date": arrival, "_ingested_at": ts, "_batch_id": f"b{arrival}"}


def _silver_rows(orders: list, deliveries: list, ratings: list) -> dict[str, list[dict]]:
    return {
        "silver_orders": [_silver_row(i, e, {"amount": e[3]}) for i, e in enumerate(orders)],
        "silver_deliveries": [
            _silver_row(1000 + i, e, {"promised_minutes": e[3], "actual_minutes": e[4]})
            for i, e in enumerate(deliveries)
        ],
        "silver_ratings": [_silver_row(2000 + i, e, {"rating": e[3]}) for i, e in enumerate(ratings)],
    }


def _with_earlier_copies(rows: dict[str, list[dict]], rng: random.Random, quiet: set[date]) -> None:
    """Give some late events a copy sent on an earlier arrival day (``_copy``), never a quiet one.

    Silver keeps the event with the earlier day, also when that day runs
    after the later one: it then moves the stored row's arrival back.
    """
    for table_rows in rows.values():
        for row in table_rows:
            late_by = (row["_arrival_date"] - row["event_date"]).days
            if late_by >= 1 and rng.random() < 0.4:
                copy = row["_arrival_date"] - timedelta(days=rng.randint(1, late_by + 1))
                if copy not in quiet:
                    row["_copy"] = copy


def _stored_events(rows: dict[str, list[dict]], stored: dict[str, date]) -> tuple[list, list, list]:
    """The events silver holds, with the arrival it holds, as the oracles take them."""
    values = {"silver_orders": ("amount",), "silver_deliveries": ("promised_minutes", "actual_minutes"),
              "silver_ratings": ("rating",)}
    return tuple(  # type: ignore[return-value]
        [(r["user_key"], r["event_date"], stored[r["event_id"]], *(r[c] for c in columns))
         for r in rows[logical] if r["event_id"] in stored]
        for logical, columns in values.items()
    )


def _assert_gold_is_the_oracles(
    spark: SparkSession, settings: Settings, events: tuple[list, list, list], as_of: date
) -> None:
    daily, features = _snapshot(spark, settings)
    rules = settings.pipeline
    expected = features_oracle(*events, as_of, rules.feature_windows_days, rules.feature_version)
    assert_df_equality(features, spark.createDataFrame(expected, schema=features.schema),
                       ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(daily, spark.createDataFrame(daily_oracle(*events), schema=daily.schema),
                       ignore_row_order=True, ignore_nullable=True)


def _write_arrivals(
    spark: SparkSession, settings: Settings, rows: dict[str, list[dict]], processed: set[date],
    stored: dict[str, date],
) -> int:
    """Silver's writes once the ``processed`` days ran: new events inserted with their
    earliest processed copy's day, stored ones moved back to an earlier copy's day
    (a MERGE that updates ``_arrival_date`` only, as silver's). The moves made."""
    moves = 0
    for logical, table_rows in rows.items():
        new, moved = [], []
        for row in table_rows:
            seen = [d for d in (row["_arrival_date"], row.get("_copy")) if d in processed]
            if not seen:
                continue
            first, event_id = min(seen), row["event_id"]
            if event_id not in stored:
                new.append({**row, "_arrival_date": first})
            elif first < stored[event_id]:
                moved.append((event_id, first))
            stored[event_id] = min(first, stored.get(event_id, first))
        if new:
            _append(spark, settings, logical, new)
        if moved:
            moves += len(moved)
            _move_arrivals(spark, settings, logical, moved)
    return moves


def _move_arrivals(
    spark: SparkSession, settings: Settings, logical: str, moves: list[tuple[str, date]]
) -> None:
    """Silver's update when earlier copies of stored events come: each (event_id, day)
    moves that event's arrival back to the day, and only back (a MERGE, as silver's)."""
    earlier = spark.createDataFrame(moves, "event_id string, arrival date")
    (
        DeltaTable.forName(spark, settings.table(logical)).alias("t")
        .merge(earlier.alias("s"), "t.event_id = s.event_id")
        .whenMatchedUpdate(
            F.col("s.arrival") < F.col("t._arrival_date"), {"_arrival_date": F.col("s.arrival")}
        )
        .execute()
    )


def _equal_to_full(spark: SparkSession, settings: Settings) -> tuple[DataFrame, DataFrame]:
    """Both gold tables as the increments left them, after checking them against ``--full``."""
    daily_incremental, features_incremental = _snapshot(spark, settings)
    assert incremental.refresh(spark, settings, full=True).mode == "full"
    daily_full, features_full = _snapshot(spark, settings)
    assert_df_equality(daily_incremental, daily_full, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(features_incremental, features_full, ignore_row_order=True, ignore_nullable=True)
    return daily_incremental, features_incremental


def _append(spark: SparkSession, settings: Settings, logical: str, rows: list[dict]) -> None:
    name = settings.table(logical)
    schema = tables.read(spark, name).schema
    full_rows = [{f.name: row.get(f.name) for f in schema.fields} for row in rows]
    tables.append(spark.createDataFrame(full_rows, schema), name)


def _record_processed(spark: SparkSession, settings: Settings, days: list[date]) -> None:
    """Write the silver ledger rows that say these arrival days were processed, as silver does last."""
    _append(spark, settings, "ops_silver_batches",
            [{"source": "order_placed", "arrival_date": day, "batch_id": f"order_placed-{day}", "rows_in": 0}
             for day in days])


def _last_run_note(spark: SparkSession, settings: Settings) -> str:
    """The commit note of the last gold run in ``ops.gold_runs``."""
    last_run = tables.read(spark, settings.table("ops_gold_runs")).orderBy(F.desc("finished_at")).first()
    return f"lakeward gold run {last_run['run_id']}"


def _snapshot(spark: SparkSession, settings: Settings) -> tuple[DataFrame, DataFrame]:
    """Both gold tables pinned at their current versions, so a later overwrite does not change them."""
    return tuple(  # type: ignore[return-value]
        tables.read(spark, name, version=tables.current_version(spark, name))
        for name in (settings.table("gold_user_daily"), settings.table("gold_user_features"))
    )


@pytest.mark.parametrize(("seed", "order"), [(0, "shuffled"), (1, "shuffled"), (2, "in order")])
def test_increments_equal_full_recompute_and_oracle(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, seed: int, order: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    # Two arrival days bring no event: one inside the period, one after it.
    quiet = {START + timedelta(days=20), START + timedelta(days=DAYS + 10)}
    orders, deliveries, ratings = ([e for e in events if e[2] not in quiet] for events in _events(seed))
    rows = _silver_rows(orders, deliveries, ratings)
    _with_earlier_copies(rows, random.Random(200 + seed), quiet)
    arrival_days = sorted(
        {d for table in rows.values() for r in table for d in (r["_arrival_date"], r.get("_copy"))} - {None}
        | quiet
    )
    if order == "shuffled":
        # Nearly every chunk then reaches back before the last run's as-of.
        rng = random.Random(100 + seed)
        rng.shuffle(arrival_days)
        chunks = [arrival_days[i::6] for i in range(6)]
    else:
        # Runs of consecutive days, as a daily schedule delivers them (late
        # events still reach back to earlier event dates).
        cuts = [0, 9, 10, 11, 20, 21, 33, len(arrival_days)]
        chunks = [arrival_days[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]

    modes, processed, stored, moves = [], set(), {}, 0
    for step, chunk in enumerate(chunks):
        processed |= set(chunk)
        moves += _write_arrivals(spark, settings, rows, processed, stored)
        _record_processed(spark, settings, chunk)
        if step == 2:
            # Dies after the gold MERGEs, before the ledger: the next run redoes the work.
            def crash(*_: object) -> None:
                raise RuntimeError("simulated crash before the ledger write")

            monkeypatch.setattr(incremental, "_record", crash)
            with pytest.raises(RuntimeError, match="simulated crash"):
                incremental.refresh(spark, settings)
            monkeypatch.undo()
        modes.append(incremental.refresh(spark, settings).mode)
        # After every run, not only the last: a later run may rewrite a wrong row.
        _assert_gold_is_the_oracles(spark, settings, _stored_events(rows, stored), max(processed))
        if step % 2 == 1:
            assert incremental.refresh(spark, settings).mode == "up_to_date"

    # Moved arrivals (updates in silver's change feed) are applied as increments too.
    assert modes[0] == "full" and set(modes[1:]) == {"incremental"}
    assert moves > 0 if order == "shuffled" else moves == 0
    _equal_to_full(spark, settings)
    assert incremental.refresh(spark, settings).as_of == max(arrival_days)


def test_a_rerun_with_nothing_new_writes_nothing(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    orders, deliveries, ratings = _events(5)
    for logical, table_rows in _silver_rows(orders[:10], deliveries[:5], ratings[:5]).items():
        _append(spark, settings, logical, table_rows)
    first = incremental.refresh(spark, settings)
    versions = {name: tables.current_version(spark, settings.table(name))
                for name in ("gold_user_daily", "gold_user_features")}
    again = incremental.refresh(spark, settings)
    assert (first.mode, again.mode) == ("full", "up_to_date")
    assert again.inputs == first.inputs
    assert versions == {name: tables.current_version(spark, settings.table(name)) for name in versions}
    # A lakeward that computes gold otherwise recomputes it once, nothing new in silver or not.
    monkeypatch.setattr(gold, "DEFINITION_REVISION", gold.DEFINITION_REVISION + 1)
    assert [incremental.refresh(spark, settings).mode for _ in range(2)] == ["full", "up_to_date"]
    # An older lakeward's row, its time shifted hours ahead by its process's TZ, is not the last run.
    ledger = settings.table("ops_gold_runs")
    shifted = (
        tables.read(spark, ledger).orderBy(F.desc("finished_at")).limit(1)
        .withColumn("finished_at", F.col("finished_at") + F.expr("INTERVAL 8 HOURS"))
        .withColumn("definition_revision", F.lit(None).cast("int"))
    )
    tables.append(shifted, ledger)
    assert incremental.refresh(spark, settings).mode == "up_to_date"


def test_changed_feature_windows_recompute_the_history_with_the_new_columns(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """Other windows in the configuration: the next run recomputes in full, and
    ``gold.user_features`` then has the new windows' columns, not the old ones."""
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    rows = _silver_rows(*_events(7))
    for logical, table_rows in rows.items():
        _append(spark, settings, logical, table_rows)
    assert incremental.refresh(spark, settings).mode == "full"
    windows = (3, 10)
    wider = settings.model_copy(
        update={"pipeline": settings.pipeline.model_copy(update={"feature_windows_days": windows})}
    )
    assert incremental.refresh(spark, wider).mode == "full"
    assert incremental.refresh(spark, wider).mode == "up_to_date"
    features = _snapshot(spark, wider)[1]
    assert "orders_10d" in features.columns and "orders_7d" not in features.columns
    stored = {r["event_id"]: r["_arrival_date"] for table_rows in rows.values() for r in table_rows}
    _assert_gold_is_the_oracles(spark, wider, _stored_events(rows, stored), max(stored.values()))


MARCH = (date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3))


def _orders_of_a_and_b(spark: SparkSession, base: Settings, root: Path) -> tuple[Settings, list[dict]]:
    """Empty silver tables, and the silver rows of four orders by users a and b on the days of ``MARCH``."""
    settings = _settings(base, root)
    silver.ensure_tables(spark, settings)
    d1, d2, d3 = MARCH
    orders = [("a", d1, d1, Decimal("10.00")), ("b", d1, d1, Decimal("5.00")), ("a", d2, d2, Decimal("1.00")),
              ("b", d3, d3, Decimal("2.00"))]
    return settings, _silver_rows(orders, [], [])["silver_orders"]


def test_one_new_day_in_order_only_appends_that_day(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, rows = _orders_of_a_and_b(spark, base_settings, tmp_path)
    d1, d2, d3 = MARCH
    _append(spark, settings, "silver_orders", rows[:2])
    incremental.refresh(spark, settings)
    before = tables.read(spark, settings.table("gold_user_features")).collect()
    _append(spark, settings, "silver_orders", rows[2:3])
    with monkeypatch.context() as patched:
        patched.setattr(incremental, "_record", lambda *_: (_ for _ in ()).throw(RuntimeError("crash")))
        with pytest.raises(RuntimeError, match="crash"):
            incremental.refresh(spark, settings)
    result = incremental.refresh(spark, settings)
    after = tables.read(spark, settings.table("gold_user_features"))
    assert (result.mode, result.as_of, result.feature_rows_written) == ("incremental", d2, 2)
    assert sorted(before) == sorted(after.filter(F.col("feature_date") == d1).collect())
    new = [(r["user_key"], r["orders_7d"]) for r in after.filter(F.col("feature_date") == d2).collect()]
    assert sorted(new) == [("a", 2), ("b", 1)], "the run that died left no second copy"
    note = tables.last_commit_metadata(spark, settings.table("gold_user_features"))
    assert note == _last_run_note(spark, settings), "the commit names the run the ledger records"
    # The retry replaced what the run that died had written; the next day, after a
    # run that finished, is a plain append that removes no file.
    _append(spark, settings, "silver_orders", rows[3:])
    assert incremental.refresh(spark, settings).feature_rows_written == 2
    commit = tables.history(spark, settings.table("gold_user_features"), 1).first()
    assert (commit["operation"], commit["operationParameters"]["mode"]) == ("WRITE", "Append")
    assert commit["operationMetrics"].get("numRemovedFiles", "0") == "0"
    latest = tables.read(spark, settings.table("gold_user_features")).filter(F.col("feature_date") == d3)
    assert sorted((r["user_key"], r["orders_7d"]) for r in latest.collect()) == [("a", 2), ("b", 2)]


def test_rows_removed_from_gold_outside_lakeward_recompute_it_in_full(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An increment continues each user from gold's last rows: after a DELETE (or TRUNCATE,
    or RESTORE) it would start them from nothing. OPTIMIZE changes no row, so it does not count."""
    settings, rows = _orders_of_a_and_b(spark, base_settings, tmp_path)
    d1, d2, d3 = MARCH
    features = settings.table("gold_user_features")
    _append(spark, settings, "silver_orders", rows[:2])
    incremental.refresh(spark, settings)
    DeltaTable.forName(spark, features).optimize().executeCompaction()
    _append(spark, settings, "silver_orders", rows[2:3])
    assert incremental.refresh(spark, settings).mode == "incremental"
    DeltaTable.forName(spark, features).delete(F.col("user_key") == "b")
    _append(spark, settings, "silver_orders", rows[3:])
    with caplog.at_level(logging.INFO, logger="lakeward.incremental"):
        assert incremental.refresh(spark, settings).mode == "full"
    assert f"gold changed outside lakeward since the last run: {features} (version" in caplog.text
    assert "DELETE" in caplog.text
    _, kept = _equal_to_full(spark, settings)
    assert sorted((r["user_key"], r["feature_date"], r["orders_7d"]) for r in kept.collect()) == [
        ("a", d1, 1), ("a", d2, 2), ("a", d3, 2), ("b", d1, 1), ("b", d2, 1), ("b", d3, 2)]


def test_columns_of_gold_changed_outside_lakeward_recompute_it_in_full(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two columns renamed into each other's place (under column mapping) change no row, but an
    increment would continue each user from the other column's values. A column a user added
    to ``user_daily`` is a change too; the full recompute leaves it null there (and writes
    ``user_features`` with the columns the configured windows give), and a late event is then
    merged and its dates overwritten as usual."""
    settings, rows = _orders_of_a_and_b(spark, base_settings, tmp_path)
    d1, _, d3 = MARCH
    features, daily = (settings.table(logical) for logical in ("gold_user_features", "gold_user_daily"))
    _append(spark, settings, "silver_orders", rows[:2])
    incremental.refresh(spark, settings)
    spark.sql(f"ALTER TABLE {tables.quoted_name(features)} SET TBLPROPERTIES ('delta.minReaderVersion' = "
              "'2', 'delta.minWriterVersion' = '5', 'delta.columnMapping.mode' = 'name')")
    for old, new in (("spend_3d", "swap"), ("spend_7d", "spend_3d"), ("swap", "spend_7d")):
        spark.sql(f"ALTER TABLE {tables.quoted_name(features)} RENAME COLUMN {old} TO {new}")
    spark.sql(f"ALTER TABLE {tables.quoted_name(daily)} ADD COLUMNS (note STRING)")
    _append(spark, settings, "silver_orders", rows[2:])
    with caplog.at_level(logging.INFO, logger="lakeward.incremental"):
        assert incremental.refresh(spark, settings).mode == "full"
    assert "RENAME COLUMN" in caplog.text
    [late] = _silver_rows([("a", d1, d3, Decimal("4.00"))], [], [])["silver_orders"]
    _append(spark, settings, "silver_orders", [{**late, "event_id": "late", "_batch_id": "late"}])
    assert incremental.refresh(spark, settings).mode == "incremental"
    assert tables.history(spark, features, 1).first()["operation"] == "MERGE"
    assert tables.read(spark, daily).filter(F.col("note").isNotNull()).count() == 0
    _equal_to_full(spark, settings)


def _two_runs_then_full(
    spark: SparkSession, settings: Settings, orders: list, first: int, as_of: tuple[date, date]
) -> DataFrame:
    """Gold over ``orders[:first]``, then an increment over the rest; the increment's
    ``user_features``, after checking it against ``--full``. ``as_of``: each run's."""
    silver.ensure_tables(spark, settings)
    rows = _silver_rows(orders, [], [])["silver_orders"]
    _append(spark, settings, "silver_orders", rows[:first])
    assert incremental.refresh(spark, settings).as_of == as_of[0]
    _append(spark, settings, "silver_orders", rows[first:])
    result = incremental.refresh(spark, settings)
    assert (result.mode, result.as_of) == ("incremental", as_of[1])
    features_name = settings.table("gold_user_features")
    assert tables.history(spark, features_name, 1).first()["operation"] == "MERGE"
    for logical in ("gold_user_features", "gold_user_daily"):
        note = tables.last_commit_metadata(spark, settings.table(logical))
        assert note == _last_run_note(spark, settings), "a MERGE commit names its run too"
    _, features_incremental = _snapshot(spark, settings)
    incremental.refresh(spark, settings, full=True)
    _, features_full = _snapshot(spark, settings)
    assert_df_equality(features_incremental, features_full, ignore_row_order=True, ignore_nullable=True)
    return features_incremental


def test_events_known_after_their_arrival_day_carry_over_into_a_merge(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """An event dated after its arrival day (within silver's tolerance) is known only on its own date.

    It is stored by the run of its arrival day but has no row yet; a later
    run that must MERGE (a backfill of an earlier arrival day) still has to
    give its user rows from that date on, though the change feed does not
    list it.
    """
    d1, d2, d3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
    orders = [
        ("a", d1, d1, Decimal("10.00")),
        ("x", d2, d1, Decimal("7.00")),  # dated the day after it arrived
        ("a", d2, d2, Decimal("1.00")),
        ("a", d1, d1, Decimal("3.00")),  # the backfill of arrival day d1
        ("y", d3, d2, Decimal("2.00")),
    ]
    features = _two_runs_then_full(spark, _settings(base_settings, tmp_path), orders, 2, (d1, d2))
    x_rows = features.filter(F.col("user_key") == "x").select("feature_date", "orders_7d")
    assert [tuple(r) for r in x_rows.collect()] == [(d2, 1)]


def test_a_backfill_that_also_adds_new_days_starts_new_users_on_their_first_day(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """A run that MERGEs (it reaches back before the last as_of) and also moves
    as_of on by several days: a user first known on one of the new days gets
    rows from that day, not from the day after the last as_of."""
    d1, d3, d5 = date(2026, 3, 1), date(2026, 3, 3), date(2026, 3, 5)
    orders = [
        ("a", d3, d3, Decimal("10.00")),
        ("a", d1, d1, Decimal("3.00")),  # the backfill of arrival day d1
        ("z", d5, d5, Decimal("2.00")),  # z's first event, two days after the last as_of
    ]
    features = _two_runs_then_full(spark, _settings(base_settings, tmp_path), orders, 1, (d3, d5))
    z_rows = features.filter(F.col("user_key") == "z").select("feature_date", "orders_7d")
    assert [tuple(r) for r in z_rows.collect()] == [(d5, 1)]


def test_an_arrival_day_without_events_still_moves_the_features_on(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """Silver processed d3 and kept no event of it (all quarantined, say): d3
    still gets every user's row, with the windows moved on, in an increment
    as in ``--full``."""
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    d0, d2, d3 = date(2026, 2, 28), date(2026, 3, 2), date(2026, 3, 3)
    orders = [("a", d0, d0, Decimal("4.00")), ("a", d2, d2, Decimal("10.00"))]
    _append(spark, settings, "silver_orders", _silver_rows(orders, [], [])["silver_orders"])
    _record_processed(spark, settings, [d0, d0 + timedelta(days=1), d2])
    assert incremental.refresh(spark, settings).as_of == d2
    columns = ("orders_3d", "spend_3d", "orders_7d", "days_since_last_order")

    def row_of(features: DataFrame, day: date) -> tuple:
        return tuple(features.filter(F.col("feature_date") == day).select(*columns).first())

    assert row_of(_snapshot(spark, settings)[1], d2) == (2, Decimal("14.00"), 2, 0)
    # A users file alone does not move the history on: the day's events may still come.
    _append(spark, settings, "ops_silver_batches",
            [{"source": "users", "arrival_date": d3, "batch_id": f"users-{d3}"}])
    assert incremental.refresh(spark, settings).mode == "up_to_date"
    _record_processed(spark, settings, [d3])
    result = incremental.refresh(spark, settings)
    assert (result.mode, result.as_of, result.feature_rows_written) == ("incremental", d3, 1)
    assert incremental.refresh(spark, settings).mode == "up_to_date"
    features_incremental = _snapshot(spark, settings)[1]
    # The order of 28 February has left the 3-day window on d3.
    assert row_of(features_incremental, d3) == (1, Decimal("10.00"), 2, 1)
    incremental.refresh(spark, settings, full=True)
    assert_df_equality(features_incremental, _snapshot(spark, settings)[1],
                       ignore_row_order=True, ignore_nullable=True)


def test_a_commit_note_is_set_only_inside_its_block(spark: SparkSession) -> None:
    conf = tables.USER_METADATA_CONF
    with tables.noted_commits(spark, "first"):
        assert spark.conf.get(conf) == "first"
    assert spark.conf.get(conf, None) is None
    spark.conf.set(conf, "set by the caller")
    try:
        with pytest.raises(RuntimeError), tables.noted_commits(spark, "second"):
            assert spark.conf.get(conf) == "second"
            raise RuntimeError("the MERGE failed")
        assert spark.conf.get(conf) == "set by the caller", "the value found is put back"
    finally:
        spark.conf.unset(conf)


def test_the_cached_silver_reads_are_released_when_one_of_them_fails(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    names = {logical: settings.table(logical) for logical in incremental.SILVER_EVENTS}
    versions = {name: tables.current_version(spark, name) for name in names.values()}
    versions[names["silver_ratings"]] = versions[names["silver_ratings"]] + 5  # not written yet
    frame_class = type(spark.range(0))
    persisted: list[DataFrame] = []
    persist = frame_class.persist

    def recording_persist(df: DataFrame, *args: object, **kwargs: object) -> DataFrame:
        persisted.append(df)
        return persist(df, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(frame_class, "persist", recording_persist)
    with pytest.raises(Exception, match="(?i)version"):
        incremental._needed_rows(spark, settings, names, versions, F.lit(False), START, START)
    assert len(persisted) == 2, "the reads of the other two tables were cached"
    assert not any(df.is_cached for df in persisted), "and released again"


@pytest.mark.parametrize(
    "change", ["event deleted", "arrival moved later", "user changed", "event date changed"]
)
def test_a_change_in_silver_other_than_an_arrival_moved_back_recomputes_in_full(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, change: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Such a change can shorten a user's history or end it, which an increment never removes."""
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    d0, d1, d2, d3 = date(2026, 2, 28), date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
    orders = [("a", d1, d1, Decimal("10.00")), ("b", d2, d2, Decimal("5.00")), ("a", d3, d3, Decimal("1.00"))]
    _append(spark, settings, "silver_orders", _silver_rows(orders, [], [])["silver_orders"])
    assert incremental.refresh(spark, settings).mode == "full"
    target = DeltaTable.forName(spark, settings.table("silver_orders"))
    first = F.col("event_id") == F.lit("e0")
    if change == "event deleted":
        target.delete(first)
    elif change == "arrival moved later":
        target.update(first, {"_arrival_date": F.lit(d2)})
    elif change == "user changed":
        target.update(first, {"user_key": F.lit("c")})
    else:
        # A day earlier, still known on its arrival day: gold's row of d1 for it has to go.
        target.update(first, {"event_date": F.lit(d0),
                              "event_ts": F.col("event_ts") - F.expr("INTERVAL 1 DAY")})
    with caplog.at_level(logging.INFO, logger=incremental.__name__):
        assert incremental.refresh(spark, settings).mode == "full"
    reason = "holds deletes" if change == "event deleted" else "changes an event's user or date"
    assert reason in caplog.text
    first_days = _snapshot(spark, settings)[1].groupBy("user_key").agg(F.min("feature_date"))
    expected = {"event deleted": {"a": d3, "b": d2}, "arrival moved later": {"a": d2, "b": d2},
                "user changed": {"a": d3, "b": d2, "c": d1}, "event date changed": {"a": d1, "b": d2}}[change]
    assert dict(tuple(r) for r in first_days.collect()) == expected
    changed = {"event deleted": [], "arrival moved later": [("a", d1, d2, Decimal("10.00"))],
               "user changed": [("c", d1, d1, Decimal("10.00"))],
               "event date changed": [("a", d0, d1, Decimal("10.00"))]}[change]
    _assert_gold_is_the_oracles(spark, settings, (changed + orders[1:], [], []), d3)


@pytest.mark.parametrize("branch", ["before the last as_of", "after the last as_of"])
def test_a_moved_arrival_restarts_its_user_on_the_earlier_day(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, branch: str
) -> None:
    """The only change in the interval besides an insert of another user: a's order,
    stored with a late arrival, moves back to its own date. a's rows then start there,
    in an increment (a MERGE before the last as_of, an append after it) as in --full."""
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    d = [date(2026, 3, 1) + timedelta(days=i) for i in range(5)]
    if branch == "before the last as_of":
        orders = [("a", d[0], d[2], Decimal("10.00")), ("b", d[3], d[3], Decimal("5.00"))]
        rows = _silver_rows(orders, [], [])["silver_orders"]
        _append(spark, settings, "silver_orders", rows)
        _record_processed(spark, settings, d[:4])
        assert incremental.refresh(spark, settings).as_of == d[3]
        moved, moved_to = "e0", d[0]
    else:
        orders = [("b", d[1], d[1], Decimal("5.00")), ("a", d[2], d[4], Decimal("10.00"))]
        rows = _silver_rows(orders, [], [])["silver_orders"]
        _append(spark, settings, "silver_orders", rows[:1])
        _record_processed(spark, settings, d[:2])
        assert incremental.refresh(spark, settings).as_of == d[1]
        _append(spark, settings, "silver_orders", rows[1:])
        _record_processed(spark, settings, d[2:])
        moved, moved_to = "e1", d[2]
    _move_arrivals(spark, settings, "silver_orders", [(moved, moved_to)])
    result = incremental.refresh(spark, settings)
    assert result.mode == "incremental"
    features_incremental = _equal_to_full(spark, settings)[1]
    a_rows = features_incremental.filter(F.col("user_key") == "a").orderBy("feature_date")
    assert a_rows.select("feature_date", "orders_7d").first() == (moved_to, 1)
    stored = [(user, day, moved_to if user == "a" else arrival, amount)
              for user, day, arrival, amount in orders]
    _assert_gold_is_the_oracles(spark, settings, (stored, [], []), result.as_of)


def test_moves_that_take_the_last_arrival_back_recompute_in_full(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Silver wrote day 5's rows and died before recording the day; gold ran on them.
    Then day 3 ran, and every day 5 row was a copy sent again on day 3. Silver's last
    day is now day 3, and the feature rows of days 4 and 5 have to go."""
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    d1, d3, d5 = date(2026, 3, 1), date(2026, 3, 3), date(2026, 3, 5)
    orders = [("b", d1, d1, Decimal("5.00")), ("a", d3, d5, Decimal("10.00"))]
    _append(spark, settings, "silver_orders", _silver_rows(orders, [], [])["silver_orders"])
    _record_processed(spark, settings, [d1])
    assert incremental.refresh(spark, settings).as_of == d5
    _move_arrivals(spark, settings, "silver_orders", [("e1", d3)])
    _record_processed(spark, settings, [d3])
    with caplog.at_level(logging.INFO, logger=incremental.__name__):
        result = incremental.refresh(spark, settings)
    assert (result.mode, result.as_of) == ("full", d3)
    assert "took silver's last arrival day back" in caplog.text
    assert _snapshot(spark, settings)[1].agg(F.max("feature_date")).first()[0] == d3


def test_a_value_corrected_in_silver_is_applied_as_an_increment(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    """An update that keeps the event's user, date and known day (an amount corrected,
    from outside the pipeline) changes the rows from the day the event was known."""
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    d1, d3 = date(2026, 3, 1), date(2026, 3, 3)
    orders = [("a", d1, d1, Decimal("10.00")), ("b", d3, d3, Decimal("5.00"))]
    _append(spark, settings, "silver_orders", _silver_rows(orders, [], [])["silver_orders"])
    assert incremental.refresh(spark, settings).as_of == d3
    DeltaTable.forName(spark, settings.table("silver_orders")).update(
        F.col("event_id") == F.lit("e0"), {"amount": F.lit(Decimal("12.50"))}
    )
    assert incremental.refresh(spark, settings).mode == "incremental"
    daily, features = _equal_to_full(spark, settings)
    spend = features.filter(F.col("user_key") == "a").orderBy("feature_date").select("spend_7d")
    assert [r[0] for r in spend.collect()] == [Decimal("12.50")] * 3
    assert daily.filter(F.col("user_key") == "a").first()["spend"] == Decimal("12.50")
    _assert_gold_is_the_oracles(spark, settings, ([("a", d1, d1, Decimal("12.50")), orders[1]], [], []), d3)


def test_gold_tables_under_other_names_than_the_last_run_left_recompute_in_full(
    base_settings: Settings,
) -> None:
    base = base_settings
    features, daily = base.table("gold_user_features"), base.table("gold_user_daily")
    last = incremental._LastRun(
        "r", date(2026, 3, 1), base.pipeline.feature_version, incremental._windows_text(base),
        {}, None, outputs={features: 3, daily: 2}, definition_revision=gold.DEFINITION_REVISION,
    )
    assert incremental._full_reason(base, last, {}, {}) is None
    renamed = replace(last, outputs={"gold_old.user_features": 3, daily: 2})
    assert incremental._full_reason(base, renamed, {}, {}) == "the gold tables changed names"
    # A run of a lakeward that computed gold otherwise, or that did not record how.
    for revision in (None, gold.DEFINITION_REVISION - 1):
        older = replace(last, definition_revision=revision)
        assert "computes gold otherwise than the one of the last run" in str(
            incremental._full_reason(base, older, {}, {})
        )


def test_a_change_feed_whose_files_were_vacuumed_recomputes_in_full(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Delta's retention check off, VACUUM removes files the feed still names; Delta
    then fails only once a task reads one. Gold recomputes instead of failing on every run."""
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
    events = [("a", d1, d1, Decimal("10.00")), ("b", d2, d2, Decimal("5.00"))]
    orders = _silver_rows(events, [], [])["silver_orders"]
    _append(spark, settings, "silver_orders", [row for row in orders if row["_arrival_date"] == d1])
    assert incremental.refresh(spark, settings).mode == "full"
    _append(spark, settings, "silver_orders", [row for row in orders if row["_arrival_date"] == d2])
    table = DeltaTable.forName(spark, settings.table("silver_orders"))
    table.optimize().executeCompaction()  # the day-2 rows now also live in a new file
    vacuum_everything_old(spark, settings.table("silver_orders"))
    with caplog.at_level(logging.INFO, logger=incremental.__name__):
        result = incremental.refresh(spark, settings)
    assert (result.mode, result.as_of) == ("full", d2)
    assert "cannot read the silver change feed" in caplog.text and "does not exist" in caplog.text
    _assert_gold_is_the_oracles(spark, settings, (events, [], []), d2)
    _equal_to_full(spark, settings)


def test_a_change_feed_whose_first_commits_left_the_log_recomputes_in_full(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Delta's log retention removes the commits before a checkpoint (30 days by default):
    when gold last ran before them, the feed from its next version cannot be read."""
    settings = _settings(base_settings, tmp_path)
    silver.ensure_tables(spark, settings)
    days = [date(2026, 3, 1) + timedelta(days=i) for i in range(12)]
    events = [(f"u{i % 3}", day, day, Decimal(10 + i)) for i, day in enumerate(days)]
    orders = _silver_rows(events, [], [])["silver_orders"]
    _append(spark, settings, "silver_orders", orders[:1])
    assert incremental.refresh(spark, settings).mode == "full"
    for row in orders[1:]:
        _append(spark, settings, "silver_orders", [row])  # a commit each: Delta checkpoints every tenth
    location = DeltaTable.forName(spark, settings.table("silver_orders")).detail().first()["location"]
    log_dir = Path(location.removeprefix("file:")) / "_delta_log"
    checkpoint = max(int(p.name.split(".")[0]) for p in log_dir.glob("*.checkpoint.parquet"))
    for commit in [*log_dir.glob("*.json"), *log_dir.glob("*.crc")]:
        # Hadoop's checksum of each file is a hidden file beside it.
        version = commit.name.lstrip(".").split(".")[0]
        if version.isdigit() and int(version) < checkpoint:
            commit.unlink()
    with caplog.at_level(logging.INFO, logger=incremental.__name__):
        result = incremental.refresh(spark, settings)
    assert (result.mode, result.as_of) == ("full", days[-1])
    assert "cannot read the silver change feed" in caplog.text and "DELTA_LOG_FILE_NOT_FOUND" in caplog.text
    _assert_gold_is_the_oracles(spark, settings, (events, [], []), days[-1])
    assert incremental.refresh(spark, settings).mode == "up_to_date"
