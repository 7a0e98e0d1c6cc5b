"""Unit tests for the BiteBridge synthetic event generator (no Spark)."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from lakeward import bronze, pipeline
from lakeward.config import Settings
from lakeward.sources import bitebridge
from lakeward.sources.bitebridge import (
    DRIFT_NEW_FIELD,
    DRIFT_RENAMED_FIELD,
    PERSONAL_FIELDS,
    SOURCE_FIELDS,
    SOURCES,
    FaultRates,
    GenerationSummary,
    arrival_days,
    check_dates,
    generate,
    generation_interrupted,
    landing_file,
    scan_landing,
)
from tests.conftest import isolated

START = date(2024, 3, 1)
USER_ID = re.compile(r"^usr_[0-9a-f]{12}$")
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
NUMERIC = ("amount", "total_amount", "items", "promised_minutes", "actual_minutes", "rating")


def _gen(root: Path, *, seed: int = 1, users: int = 200, days: int = 10,
         faults: FaultRates | None = None, users_feed: str = "snapshot") -> GenerationSummary:
    return generate(root, seed=seed, users=users, days=days, start=START,
                    faults=FaultRates() if faults is None else faults, users_feed=users_feed)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}


def _read(root: Path, summary: GenerationSummary) -> list[tuple[str, date, str]]:
    """(source, arrival day, raw line) for every line of every landing file."""
    out: list[tuple[str, date, str]] = []
    day = summary.first_day
    while day <= summary.last_day:
        for source in SOURCES:
            text = landing_file(root, source, day).read_text(encoding="utf-8")
            assert text == "" or text.endswith("\n")
            out.extend((source, day, line) for line in text.splitlines())
        day += timedelta(days=1)
    return out


def _parse(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    assert isinstance(obj, dict)
    return obj


def _ts_day(rec: dict[str, Any]) -> date:
    return date.fromisoformat(rec["event_ts"][:10])


def test_deterministic_and_seed_sensitive(tmp_path: Path) -> None:
    s1 = _gen(tmp_path / "a")
    s2 = _gen(tmp_path / "b")
    _gen(tmp_path / "c", seed=2)
    _gen(tmp_path / "d", seed=-1)
    assert s1 == s2
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first and first == second
    assert _files(tmp_path / "c") != first
    negative = _files(tmp_path / "d")
    shared = [name for name in first if first[name] and name in negative]
    assert shared and all(negative[name] != first[name] for name in shared), "seed -1 gave seed 1's lines"
    # A rate of 0 is a rate of 0.0: the same data set, with the same ids.
    _gen(tmp_path / "e", faults=FaultRates(malformed=0))
    _gen(tmp_path / "f", faults=FaultRates(malformed=0.0))
    assert _files(tmp_path / "e") == _files(tmp_path / "f")


def _ids(root: Path) -> dict[str, set[str]]:
    """Every event, user and order id in the landing files under ``root``."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in root.rglob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = _parse(line)
            for field in ("event_id", "user_id", "order_id"):
                if record is not None and isinstance(record.get(field), str):
                    found[field].add(record[field])
    return found


def test_another_data_set_of_the_same_seed_has_ids_of_its_own(tmp_path: Path) -> None:
    # Silver takes an event_id it has seen as a duplicate: new events must not reuse one.
    _gen(tmp_path / "a", seed=7, days=6)
    generate(tmp_path / "b", seed=7, users=200, days=6, start=START + timedelta(days=30))
    _gen(tmp_path / "c", seed=7, days=8)
    _gen(tmp_path / "d", seed=7, days=6, faults=FaultRates.none())
    ids = {name: _ids(tmp_path / name) for name in "abcd"}
    for field in ("event_id", "user_id", "order_id"):
        for other in "bcd":
            assert ids["a"][field] and not ids["a"][field] & ids[other][field], (field, other)


def test_rerun_overwrites_files_and_names_those_it_changed(tmp_path: Path) -> None:
    assert _gen(tmp_path, seed=5).replaced == ()
    before = _files(tmp_path)
    assert _gen(tmp_path, seed=5).replaced == ()  # the same bytes again
    changed = _gen(tmp_path, seed=6).replaced
    assert changed and set(changed) < set(before)
    assert sorted(_gen(tmp_path, seed=5).replaced) == sorted(changed)
    assert _files(tmp_path) == before


def test_a_stopped_generation_leaves_whole_files_and_says_so(
    tmp_path: Path, base_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gen(tmp_path / "whole")
    whole = _files(tmp_path / "whole")
    settings = isolated(base_settings, tmp_path / "root")
    renamed, rename = 0, bitebridge.os.replace

    def stop_after_six(source: Path, target: Path) -> None:
        nonlocal renamed
        if renamed == 6:
            raise KeyboardInterrupt
        renamed += 1
        rename(source, target)

    monkeypatch.setattr(bitebridge.os, "replace", stop_after_six)
    with pytest.raises(KeyboardInterrupt):
        _gen(settings.landing_dir)
    monkeypatch.undo()
    part = _files(settings.landing_dir)
    assert len(part) == 6 and all(whole[name] == content for name, content in part.items())
    assert generation_interrupted(settings.landing_dir)
    # No stage ingests a part; the Spark session is never reached.
    with pytest.raises(bronze.NoLandingDataError, match="did not finish; run it again"):
        pipeline.run_bronze(None, settings, pipeline.DateSelection())  # type: ignore[arg-type]

    _gen(settings.landing_dir)
    assert not generation_interrupted(settings.landing_dir)
    assert _files(settings.landing_dir) == whole


def test_layout_and_arrival_days(tmp_path: Path) -> None:
    days = 10
    summary = _gen(tmp_path, days=days, faults=FaultRates(late=0.3))
    assert summary.first_day == START
    assert START + timedelta(days=days - 1) <= summary.last_day <= START + timedelta(days=days + 2)
    expected = [START + timedelta(days=i) for i in range((summary.last_day - START).days + 1)]
    assert arrival_days(tmp_path) == expected
    assert summary.files == len(expected) * len(SOURCES)
    for day in expected:
        for source in SOURCES:
            path = landing_file(tmp_path, source, day)
            assert path == tmp_path / source / f"{day:%Y-%m-%d}.jsonl"
            assert path.is_file()
    assert sum(1 for _ in tmp_path.rglob("*.jsonl")) == summary.files


def test_arrival_days_edge_cases(tmp_path: Path) -> None:
    assert arrival_days(tmp_path / "missing") == []
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "notes.jsonl").write_text("")
    (tmp_path / "users" / "2024-01-02.jsonl").write_text("")
    (tmp_path / "order_placed").mkdir()
    (tmp_path / "order_placed" / "2024-01-01.jsonl").write_text("")
    (tmp_path / "order_placed" / "2024-01-02.jsonl").write_text("")
    assert arrival_days(tmp_path) == [date(2024, 1, 1), date(2024, 1, 2)]
    with pytest.raises(ValueError):
        landing_file(tmp_path, "payments", START)
    # Names no run ingests are listed, so that bronze can say so; hidden files are not.
    odd = ("20240103.jsonl", "2024-1-3.jsonl", "2024-01-03.json", "2024-01-03.JSONL", ".2024-01-03.jsonl.swp")
    for name in odd:
        (tmp_path / "order_placed" / name).write_text("{}\n")
    # So are folders and files beside the sources' folders.
    (tmp_path / "orders").mkdir()
    (tmp_path / "orders" / "2024-01-03.jsonl").write_text("{}\n")
    (tmp_path / "2024-01-03.jsonl").write_text("{}\n")
    (tmp_path / ".generating").write_text("")
    (tmp_path / "rating_submitted").write_text("{}\n")  # a source's name, but a file
    scan = scan_landing(tmp_path)
    assert scan.days == arrival_days(tmp_path) == [date(2024, 1, 1), date(2024, 1, 2)]
    assert [p.relative_to(tmp_path).as_posix() for p in scan.unrecognized] == [
        "2024-01-03.jsonl", "order_placed/2024-01-03.JSONL", "order_placed/2024-01-03.json",
        "order_placed/2024-1-3.jsonl", "order_placed/20240103.jsonl", "orders", "rating_submitted",
        "users/notes.jsonl",
    ]


def test_clean_feed(tmp_path: Path) -> None:
    days = 10
    summary = _gen(tmp_path, days=days, faults=FaultRates.none(), users_feed="changes")
    assert summary.last_day == START + timedelta(days=days - 1)
    assert all(v == 0 for v in summary.faults.values())
    rows = _read(tmp_path, summary)
    per_source = Counter(source for source, _, _ in rows)
    assert dict(per_source) == {s: n for s, n in summary.lines.items() if n}
    assert all(per_source[s] > 0 for s in SOURCES)
    event_ids: set[str] = set()
    signed_up: set[str] = set()
    referenced: set[str] = set()
    for source, day, line in rows:
        rec = _parse(line)
        assert rec is not None, line
        assert tuple(rec) == SOURCE_FIELDS[source]
        assert rec["event_type"] == source
        assert re.fullmatch(r"[0-9a-f]{32}", rec["event_id"])
        assert rec["event_id"] not in event_ids
        event_ids.add(rec["event_id"])
        assert USER_ID.match(rec["user_id"])
        assert TS.match(rec["event_ts"]) and _ts_day(rec) == day
        if source == "users":
            signed_up.add(rec["user_id"])
            assert re.fullmatch(r"[a-z]+\.[a-z]+\.[0-9a-f]{4}@example\.com", rec["email"])
            assert rec["address"].endswith(f" Street, {rec['city']}")
            assert date.fromisoformat(rec["signup_date"]) <= day
        else:
            referenced.add(rec["user_id"])
            assert re.fullmatch(r"ord_[0-9a-f]{12}", rec["order_id"])
        if source == "order_placed":
            assert re.fullmatch(r"rst_[0-9a-f]{6}", rec["restaurant_id"])
            assert 8 <= rec["amount"] <= 80 and 1 <= rec["items"] <= 6
        elif source == "delivery_completed":
            assert re.fullmatch(r"cur_[0-9a-f]{6}", rec["courier_id"])
            assert 30 <= rec["promised_minutes"] <= 45 and 15 <= rec["actual_minutes"] <= 90
        elif source == "rating_submitted":
            assert 1 <= rec["rating"] <= 5
    assert referenced <= signed_up
    assert set(PERSONAL_FIELDS) == set(SOURCES)


def test_users_snapshot_every_day(tmp_path: Path) -> None:
    users, days = 300, 12
    summary = _gen(tmp_path, users=users, days=days, faults=FaultRates(
        duplicate=0, late=0.3, malformed=0, null_key=0, out_of_range=0))
    assert summary.last_day > START + timedelta(days=days - 1)  # late events make a tail
    snapshots: dict[date, dict[str, str]] = defaultdict(dict)
    for source, day, line in _read(tmp_path, summary):
        if source == "users":
            rec = json.loads(line)
            assert rec["user_id"] not in snapshots[day]
            snapshots[day][rec["user_id"]] = line
    # Every arrival day, the tail included, holds every user signed up by its end, once.
    signup = {u: json.loads(x)["signup_date"] for s in snapshots.values() for u, x in s.items()}
    record_of: dict[str, str] = {}
    changed = 0
    for offset in range((summary.last_day - START).days + 1):
        day = START + timedelta(days=offset)
        snapshot = snapshots[day]
        assert set(snapshot) == {u for u, d in signup.items() if d <= day.isoformat()}
        for user_id, line in snapshot.items():
            rec = json.loads(line)
            assert _ts_day(rec) <= day and date.fromisoformat(rec["signup_date"]) <= day
            before = record_of.get(user_id)
            if before is not None and before != line:
                # A changed record is a new record: new id, a time on this very day.
                assert json.loads(before)["event_id"] != rec["event_id"] and _ts_day(rec) == day
                changed += 1
            record_of[user_id] = line
    assert len(record_of) == users and changed > 0


def test_the_users_feed_leaves_the_other_sources_as_they_are(tmp_path: Path) -> None:
    _gen(tmp_path / "snapshot", days=8)
    _gen(tmp_path / "changes", days=8, users_feed="changes")
    snapshot, changes = _files(tmp_path / "snapshot"), _files(tmp_path / "changes")
    assert snapshot.keys() == changes.keys()
    differ = {path.split("/")[0] for path in snapshot if snapshot[path] != changes[path]}
    assert differ == {"users"}


def test_users_changes_feed_holds_what_changed(tmp_path: Path) -> None:
    users = 300
    summary = _gen(tmp_path, users=users, faults=FaultRates.none(), users_feed="changes")
    records = [(day, json.loads(line)) for source, day, line in _read(tmp_path, summary)
               if source == "users"]
    existing = {r["user_id"] for _, r in records if date.fromisoformat(r["signup_date"]) < START}
    # About 60% of users already exist at the start; all of them are in the first file.
    assert 0.45 * users < len(existing) < 0.75 * users
    assert existing <= {r["user_id"] for day, r in records if day == START}
    # Everyone else signs up during the window, on the day of their first users line.
    assert len({r["user_id"] for _, r in records}) == users
    for day, r in records:
        assert date.fromisoformat(r["signup_date"]) <= day
    # Address changes repeat a user with a new record.
    assert len(records) > users


def test_faults_match_summary(tmp_path: Path) -> None:
    rate = 0.2
    rates = FaultRates(duplicate=rate, late=rate, malformed=rate, null_key=rate,
                       out_of_range=rate, schema_drift=True)
    days = 14
    # In a snapshot, one users record is on every day's file; a changes feed has each
    # record once, so every copy in the files is an injected duplicate.
    summary = _gen(tmp_path, users=300, days=days, faults=rates, users_feed="changes")
    rows = _read(tmp_path, summary)
    assert sum(summary.lines.values()) == len(rows)
    horizon = summary.last_day + timedelta(days=300)

    truncated = wrong_type = null_key = out_of_range = 0
    truncated_by_source: Counter[str] = Counter()
    by_event: dict[str, list[tuple[date, str, dict[str, Any]]]] = defaultdict(list)
    null_lines: list[dict[str, Any]] = []
    clean_ids: set[str] = set()
    for source, day, line in rows:
        rec = _parse(line)
        if rec is None:
            truncated += 1
            truncated_by_source[source] += 1
            assert not line.endswith("}")
            continue
        if any(isinstance(rec.get(k), str) for k in NUMERIC) or (
                source == "users" and isinstance(rec["signup_date"], int)):
            wrong_type += 1
        elif rec["event_id"] is None or rec["user_id"] is None:
            null_key += 1
        elif (rec.get("amount", rec.get("total_amount", 0)) < 0
              or rec.get("actual_minutes", 0) < 0
              or rec.get("rating", 3) not in (1, 2, 3, 4, 5)
              or _ts_day(rec) > horizon):
            out_of_range += 1
        else:
            clean_ids.add(rec["event_id"])
        if rec["event_id"] is None:
            null_lines.append(rec)
        else:
            by_event[rec["event_id"]].append((day, line, rec))

    faults = summary.faults
    assert truncated + wrong_type == faults["malformed"]
    assert truncated > 0 and wrong_type > 0
    assert null_key == faults["null_key"]
    assert out_of_range == faults["out_of_range"]

    duplicates = late = renamed = 0
    clean_non_user = non_user = 0
    for copies in by_event.values():
        duplicates += len(copies) - 1
        assert len({line for _, line, _ in copies}) == 1  # duplicates are byte-identical
        arrived = min(day for day, _, _ in copies)
        assert max(day for day, _, _ in copies) - arrived <= timedelta(days=1)
        rec = copies[0][2]
        if rec["event_type"] != "users":
            non_user += 1
            clean_non_user += rec["event_id"] in clean_ids
        if _ts_day(rec) < arrived:
            late += 1
            assert arrived - _ts_day(rec) <= timedelta(days=3)
        if rec["event_type"] == "order_placed":
            renamed += DRIFT_RENAMED_FIELD[2] in rec
            event_day = (_ts_day(rec) - START).days
            if _ts_day(rec) <= horizon:  # ignore future-dated (out of range) lines
                assert (DRIFT_RENAMED_FIELD[2] in rec) == (event_day % 7 == 5)
                assert (DRIFT_NEW_FIELD[1] in rec) == (event_day >= days // 3)
    renamed += sum(DRIFT_RENAMED_FIELD[2] in r for r in null_lines)
    assert duplicates == faults["duplicate"]
    assert late == faults["late"]
    assert renamed <= faults["renamed_field"] <= renamed + truncated_by_source["order_placed"]

    # Rates: content faults over all events; late/duplicate only hit otherwise clean lines.
    events = len(rows) - faults["duplicate"]
    for kind in ("malformed", "null_key"):
        assert abs(faults[kind] / events - rate) < 0.06, kind
    non_user += sum(1 for r in null_lines if r["event_type"] != "users")
    non_user += truncated - truncated_by_source["users"]
    assert abs(faults["out_of_range"] / non_user - rate) < 0.07
    assert abs(faults["duplicate"] / len(clean_ids) - rate) < 0.06
    assert abs(faults["late"] / clean_non_user - rate) < 0.06


def test_schema_drift_only(tmp_path: Path) -> None:
    days = 15
    rates = FaultRates(duplicate=0, late=0, malformed=0, null_key=0, out_of_range=0)
    summary = _gen(tmp_path, days=days, faults=rates)
    renamed = 0
    for source, day, line in _read(tmp_path, summary):
        rec = json.loads(line)
        if source != "order_placed":
            assert tuple(rec) == SOURCE_FIELDS[source]
            continue
        idx = (day - START).days
        keys = list(SOURCE_FIELDS[source])
        if idx % 7 == 5:
            keys[keys.index("amount")] = DRIFT_RENAMED_FIELD[2]
            renamed += 1
        if idx >= days // 3:
            keys.append(DRIFT_NEW_FIELD[1])
            assert 0 <= rec[DRIFT_NEW_FIELD[1]] <= 10
        assert list(rec) == keys
    assert renamed == summary.faults["renamed_field"] > 0
    assert {k: v for k, v in summary.faults.items() if k != "renamed_field"} == dict.fromkeys(
        ("duplicate", "late", "malformed", "null_key", "out_of_range"), 0)


def test_churn_and_delivery_semantics(tmp_path: Path) -> None:
    days = 30
    summary = _gen(tmp_path, users=400, days=days, faults=FaultRates.none())
    orders: dict[str, dict[str, Any]] = {}
    ordered_on: dict[str, set[int]] = defaultdict(set)
    deliveries: dict[str, dict[str, Any]] = {}
    ratings: list[dict[str, Any]] = []
    for source, _, line in _read(tmp_path, summary):
        rec = json.loads(line)
        if source == "order_placed":
            orders[rec["order_id"]] = rec
            ordered_on[rec["user_id"]].add((_ts_day(rec) - START).days)
        elif source == "delivery_completed":
            deliveries[rec["order_id"]] = rec
        elif source == "rating_submitted":
            ratings.append(rec)
    early = {u for u, ds in ordered_on.items() if min(ds) < days // 3}
    active_late = {u for u, ds in ordered_on.items() if max(ds) >= days - days // 3}
    assert early - active_late  # some early customers stop ordering
    assert len(orders) > 500
    # At most one order per user per day, deliveries after their order.
    assert sum(len(ds) for ds in ordered_on.values()) == len(orders)
    assert 0.9 < len(deliveries) / len(orders) <= 1.0
    n_late = 0
    for oid, dlv in deliveries.items():
        gap = _seconds(dlv["event_ts"]) - _seconds(orders[oid]["event_ts"])
        assert gap == dlv["actual_minutes"] * 60
        n_late += dlv["actual_minutes"] > dlv["promised_minutes"]
    assert 0.05 < n_late / len(deliveries) < 0.3
    assert 0.3 < len(ratings) / len(deliveries) < 0.6
    for r in ratings:
        assert _seconds(r["event_ts"]) > _seconds(deliveries[r["order_id"]]["event_ts"])


def _seconds(ts: str) -> int:
    d = date.fromisoformat(ts[:10])
    h, m, s = (int(x) for x in ts[11:19].split(":"))
    return (d - START).days * 86_400 + h * 3600 + m * 60 + s


def test_validation() -> None:
    with pytest.raises(ValueError, match=r"fault rates must be within \[0, 1\]: .*late=1\.5"):
        FaultRates(late=1.5)
    with pytest.raises(ValueError, match="malformed \\+ null_key \\+ out_of_range must not exceed 1"):
        FaultRates(malformed=0.5, null_key=0.5, out_of_range=0.5)
    with pytest.raises(ValueError, match="users and days must be positive, got users=0, days=5"):
        generate(Path("unused"), seed=1, users=0, days=5, start=START)
    none = FaultRates.none()
    assert (none.duplicate, none.late, none.malformed, none.null_key, none.out_of_range,
            none.schema_drift) == (0, 0, 0, 0, 0, False)


def test_dates_past_year_9999_or_before_year_1_are_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    # Sign-ups reach a year back, a timestamp pushed into the future two years on.
    for start, days in ((date(9999, 12, 29), 5), (date(1, 1, 1), 1), (START, 3_000_000)):
        with pytest.raises(ValueError, match=rf"start {start} with {days} day\(s\) gives dates outside"):
            generate(tmp_path / "landing", seed=1, users=2, days=days, start=start)
        assert not (tmp_path / "landing").exists()
    check_dates(date(9997, 1, 1), 5)
    check_dates(date(2, 1, 1), 5)


def test_landing_files_of_days_still_to_come_are_held_back(
    base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file named for a day after today would reach silver (whose future check is
    # relative to the arrival day) and carry gold's feature history up to that day.
    settings = isolated(base_settings, tmp_path)
    _gen(settings.landing_dir, users=5, days=3)
    days = [START + timedelta(days=i) for i in range(3)]
    monkeypatch.setattr(pipeline, "today_utc", lambda: days[1])
    scan = pipeline.bronze_landing(settings, pipeline.DateSelection())
    assert (scan.days, scan.ahead) == (days[:2], [days[2]])
    assert pipeline.bronze_landing(settings, pipeline.DateSelection(days[1])).days == [days[1]]
    with pytest.raises(bronze.NoLandingDataError, match=f"^{days[2]} is after today \\({days[1]}, UTC\\)"):
        pipeline.bronze_landing(settings, pipeline.DateSelection(days[2]))

    monkeypatch.setattr(pipeline, "today_utc", lambda: START - timedelta(days=1))
    with pytest.raises(bronze.NoLandingDataError, match=re.escape(
        f"up to today ({START - timedelta(days=1)}, UTC): 3 arrival day(s) after it "
        f"({days[0]}..{days[2]}) are held back until they come"
    )):
        pipeline.bronze_landing(settings, pipeline.DateSelection())
