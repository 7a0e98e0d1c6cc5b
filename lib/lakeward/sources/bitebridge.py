"""Deterministic synthetic event feed for BiteBridge, a food-delivery app.

The pipeline needs realistic, reproducible input without real customer data: enough
volume to matter, user behaviour with a churn signal, and the faults (duplicates, late
arrivals, malformed lines, null keys, out-of-range values, schema drift) that bronze and
silver must survive. Everything derives from one seeded ``random.Random`` and is written
day by day, so memory stays bounded by the number of users, not the number of events.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import math
import os
import random
import unicodedata
from bisect import bisect
from dataclasses import astuple, dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

from lakeward.config import parse_iso_date

SOURCES: tuple[str, ...] = ("order_placed", "delivery_completed", "rating_submitted", "users")

# Expected (wire) fields per source, in order; bronze uses these as its column list.
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "order_placed": ("event_id", "event_type", "event_ts", "user_id", "order_id",
                     "restaurant_id", "city", "amount", "items"),
    "delivery_completed": ("event_id", "event_type", "event_ts", "user_id", "order_id",
                           "courier_id", "promised_minutes", "actual_minutes"),
    "rating_submitted": ("event_id", "event_type", "event_ts", "user_id", "order_id", "rating"),
    "users": ("event_id", "event_type", "event_ts", "user_id", "email", "name", "address",
              "signup_date", "city"),
}
# Fields that carry personal data, per source (raw identifiers and contact data).
PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "order_placed": ("user_id",),
    "delivery_completed": ("user_id", "courier_id"),
    "rating_submitted": ("user_id",),
    "users": ("user_id", "email", "name", "address"),
}
# Schema drift: optional field that appears part-way, and a field renamed on some days.
DRIFT_NEW_FIELD = ("order_placed", "tip_amount")
DRIFT_RENAMED_FIELD = ("order_placed", "amount", "total_amount")  # source, original, renamed-to

FAULT_KINDS: tuple[str, ...] = (
    "duplicate", "late", "malformed", "null_key", "out_of_range", "renamed_field")
MAX_LATE_DAYS = 3
# How far generated dates reach around the period: sign-ups up to a year before it, and
# a timestamp pushed into the future one to two years (and part of a day) after its day.
_SIGNUP_DAYS_BEFORE = 365
_FUTURE_DAYS = (365, 730)
# How the users source is extracted: the whole table every day, or what changed.
USERS_FEEDS: tuple[str, ...] = ("snapshot", "changes")

_DAY = 86_400
_NEVER = 1 << 30
_M48 = (1 << 48) - 1
_CITIES = ("Amsterdam", "Berlin", "Lisbon", "Madrid", "Milan", "Paris", "Prague", "Vienna")
_FIRST = ("Anna", "Ben", "Chloé", "David", "Elena", "Felix", "Greta", "Hugo", "Inès", "Jonas",
          "Klara", "Luca", "Marta", "Noah", "Olivia", "Pablo", "Sofia", "Tomás")
_LAST = ("Bakker", "Costa", "Dubois", "Fischer", "García", "Horvat", "Jansen", "Kowalski",
         "Leroy", "Müller", "Novák", "Rossi", "Silva", "Schmidt", "Weber", "Zanetti")
_STREETS = ("Oak", "Mill", "Harbour", "Station", "Church", "Garden", "Market", "Bridge",
            "Castle", "River", "Linden", "Rose")
_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "forty")
# Orders cluster around lunch and dinner.
_HOUR_CUM = list(accumulate((1, 1, 1, 1, 1, 1, 2, 3, 4, 4, 5, 9, 12, 9, 5, 4, 5, 8, 14, 16,
                             12, 8, 5, 2)))
_RATING_CUM_ON_TIME = list(accumulate((2, 4, 14, 40, 40)))
_RATING_CUM_LATE = list(accumulate((25, 30, 25, 15, 5)))
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# Pre-formatted "HH:MM:" and "SSZ" pieces; formatting timestamps is on the hot path.
_HHMM = tuple(f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
_SSZ = tuple(f"{s:02d}Z" for s in range(60))


def _slug(text: str) -> str:
    """Lowercase ASCII form of a name, because e-mail local parts stay ASCII here."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


_FIRST_SLUG = tuple(_slug(n) for n in _FIRST)
_LAST_SLUG = tuple(_slug(n) for n in _LAST)


def _mix48(x: int) -> int:
    """Bijective 48-bit scramble: distinct counters give distinct, random-looking ids."""
    x &= _M48
    x ^= x >> 23
    x = (x * 0x2545F4914F6D) & _M48
    x ^= x >> 21
    x = (x * 0x5851F42D4C95) & _M48
    return x ^ (x >> 19)


@dataclass(frozen=True)
class FaultRates:
    """Per-line fault probabilities; defaults mimic a moderately dirty production feed.

    ``malformed``, ``null_key`` and ``out_of_range`` are mutually exclusive per line, and
    only otherwise clean lines are made late or duplicated, so every injected fault stays
    individually observable (and countable) in the files. The users source gets no late
    or out-of-range faults, to keep the dimension feed mostly clean.
    """

    duplicate: float = 0.02  # identical line again, same file or next arrival day's file
    late: float = 0.03  # lands 1..3 arrival days after its event day
    malformed: float = 0.005  # half truncated JSON, half a wrongly typed field
    null_key: float = 0.005  # event_id or user_id is null
    out_of_range: float = 0.005  # negative amount/minutes, rating 0 or 6..9, ts 1-2 years ahead
    schema_drift: bool = True  # tip_amount from day days//3; total_amount on day % 7 == 5

    def __post_init__(self) -> None:
        rates = (self.duplicate, self.late, self.malformed, self.null_key, self.out_of_range)
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError(f"fault rates must be within [0, 1]: {self}")
        if self.malformed + self.null_key + self.out_of_range > 1.0:
            raise ValueError("malformed + null_key + out_of_range must not exceed 1")

    @classmethod
    def none(cls) -> FaultRates:
        """Return rates for a perfectly clean feed, the baseline for correctness tests."""
        return cls(duplicate=0.0, late=0.0, malformed=0.0, null_key=0.0, out_of_range=0.0,
                   schema_drift=False)


@dataclass(frozen=True)
class GenerationSummary:
    """What was written, so tests and demos can check pipeline counts against ground truth.

    ``lines`` counts every written line per source (faulty and duplicate lines included);
    ``faults`` counts injected faults by kind (see ``FAULT_KINDS``); ``last_day`` is the
    last arrival day with files, which late events can push past the generated period.
    """

    files: int
    lines: dict[str, int]
    faults: dict[str, int]
    first_day: date
    last_day: date
    replaced: tuple[str, ...] = ()
    """Landing files (relative paths) that existed with other content and were written over."""


class _User:
    """Mutable per-user state; slots keep 200k users cheap.

    ``record`` is the user's current users record and ``line`` its JSON, both
    replaced on every change, so a daily snapshot re-encodes only what changed.
    """

    __slots__ = ("uid", "signup", "signup_sec", "city", "log1m", "churn", "first", "last",
                 "tag", "street_no", "street", "record", "line", "updated")

    def __init__(self, rng: random.Random, days: int) -> None:
        self.uid = ""
        self.signup = -rng.randint(1, _SIGNUP_DAYS_BEFORE) if rng.random() < 0.6 else rng.randrange(days)
        self.signup_sec = rng.randrange(_DAY)
        self.city = rng.randrange(len(_CITIES))
        rate = math.exp(rng.uniform(math.log(0.03), math.log(0.6)))
        self.log1m = math.log1p(-rate)
        lo = max(self.signup, 0) + 1
        self.churn = rng.randint(lo, days - 1) if rng.random() < 0.35 and lo < days else _NEVER
        self.first = rng.randrange(len(_FIRST))
        self.last = rng.randrange(len(_LAST))
        self.tag = rng.getrandbits(16)
        self.street_no = rng.randint(1, 250)
        self.street = rng.randrange(len(_STREETS))
        self.record: dict[str, Any] = {}
        self.line = ""
        self.updated = 0


class _Generator:
    """Single-pass, day-by-day generator; holds only users and ≤4 days of pending lines."""

    def __init__(self, landing_dir: Path, seed: int, n_users: int, days: int, start: date,
                 rates: FaultRates, users_feed: str) -> None:
        self.dir, self.days, self.start, self.rates = landing_dir, days, start, rates
        self.snapshot = users_feed == "snapshot"
        # Random takes an int seed's absolute value: -5 would give 5's events. Text keeps the sign.
        self.rng = rng = random.Random(seed if seed >= 0 else str(seed))
        # The users lines' faults draw from their own sequence: how many users lines there
        # are (snapshot or changes) then leaves every other source's data as it is.
        self.users_rng = random.Random(seed ^ 0x5EED_05E5 if seed >= 0 else f"{seed}:users")
        self.dirty = any((rates.duplicate, rates.late, rates.malformed, rates.null_key,
                          rates.out_of_range))
        self.max_arrival = days - 1 + MAX_LATE_DAYS
        self.lines = dict.fromkeys(SOURCES, 0)
        self.faults = dict.fromkeys(FAULT_KINDS, 0)
        self.files = 0
        self.replaced: list[str] = []
        self.pending: dict[int, dict[str, list[tuple[int, str]]]] = {}
        self.date_cache: dict[int, str] = {}
        self.users = sorted((_User(rng, days) for _ in range(n_users)),
                            key=lambda u: (u.signup, u.signup_sec))
        # Ids also depend on everything else that shapes the events (the users feed does not:
        # its faults draw from their own sequence). With the seed alone, another --days or
        # --start would give unrelated events and users the ids of this data set's, and
        # silver would drop those events as duplicates of these.
        # Rates as floats: FaultRates(duplicate=0) makes the data FaultRates(duplicate=0.0) does.
        shape_of = (n_users, days, start.isoformat(), tuple(float(value) for value in astuple(rates)))
        shape = hashlib.sha256(repr(shape_of).encode()).digest()
        self.id_mask = int.from_bytes(shape[:16], "big")
        user_salt = rng.getrandbits(48) ^ int.from_bytes(shape[16:22], "big")
        self.order_salt = rng.getrandbits(48) ^ int.from_bytes(shape[22:28], "big")
        for i, u in enumerate(self.users):
            u.uid = f"usr_{_mix48(user_salt + i):012x}"
        self.order_seq = 0
        self.restaurants: list[list[str]] = [[] for _ in _CITIES]
        for i, rid in enumerate(self._pool(max(50, n_users // 20))):
            self.restaurants[i % len(_CITIES)].append(f"rst_{rid}")
        self.couriers = [f"cur_{c}" for c in self._pool(max(20, n_users // 50))]
        self.buckets: list[list[int]] = [[] for _ in range(days)]

    def _pool(self, size: int) -> list[str]:
        """Draw distinct 6-hex ids, because a 24-bit space makes collisions likely."""
        seen: dict[str, None] = {}
        while len(seen) < size:
            seen[f"{self.rng.getrandbits(24):06x}"] = None
        return list(seen)

    def run(self) -> GenerationSummary:
        """Generate every day, flushing each arrival day as soon as it can no longer grow.

        The marker :data:`GENERATING_MARKER` stands in the landing directory
        until the last file is written, so a generation that was stopped part
        way is known as one (:func:`generation_interrupted`).
        """
        marker = self.dir / GENERATING_MARKER
        self.dir.mkdir(parents=True, exist_ok=True)
        marker.write_text("a lakeward generate that has not finished writes here\n", encoding="utf-8")
        summary = self._all_days()
        marker.unlink()
        return summary

    def _all_days(self) -> GenerationSummary:
        n_existing = next((i for i, u in enumerate(self.users) if u.signup >= 0), len(self.users))
        for idx in range(n_existing):
            self._schedule(idx, 0)
        for d in range(self.days):
            n_existing = self._users_day(d, n_existing)
            for idx in self.buckets[d]:
                self._order(idx, d)
            self.buckets[d] = []
            self._flush(d)
        last = max(self.pending, default=self.days - 1)
        self.max_arrival = last  # a copy made on the last day stays there: no new day begins
        for a in range(self.days, last + 1):
            if self.snapshot:  # every arrival day with files has its users snapshot
                self._users_lines(self.users[:n_existing], a)
            self._flush(a)
        return GenerationSummary(files=self.files, lines=self.lines, faults=self.faults,
                                 first_day=self.start,
                                 last_day=self.start + timedelta(days=max(last, self.days - 1)),
                                 replaced=tuple(self.replaced))

    def _ts(self, t: int) -> str:
        """Format seconds since ``start`` midnight as second-precision ISO-8601 UTC."""
        d, s = divmod(t, _DAY)
        prefix = self.date_cache.get(d)
        if prefix is None:
            prefix = self.date_cache[d] = f"{self.start + timedelta(days=d)}T"
        return prefix + _HHMM[s // 60] + _SSZ[s % 60]

    def _event_id(self) -> str:
        return f"{self.rng.getrandbits(128) ^ self.id_mask:032x}"

    def _schedule(self, idx: int, from_day: int) -> None:
        """Queue the user's next order; geometric gaps avoid a users×days coin-flip loop."""
        u = self.users[idx]
        day = from_day + int(math.log(1.0 - self.rng.random()) / u.log1m)
        if day < self.days and day < u.churn:
            self.buckets[day].append(idx)

    def _users_day(self, d: int, n_existing: int) -> int:
        """Apply the day's address changes and signups, then write the day's users records.

        A snapshot holds every user signed up by the end of the day, each as their
        current record: its ``event_id`` and ``event_ts`` are those of the record's last
        change, so an unchanged user's line is the same every day. A changes feed holds
        only the records that changed that day (all of them on the first day).
        """
        rng, users = self.rng, self.users
        changed: dict[str, _User] = {}  # a user changed twice in a day is extracted once
        if d == 0:
            for u in users[:n_existing]:
                self._new_record(u, rng.randrange(600))
                changed[u.uid] = u
        k = int(n_existing * 0.01 + rng.random())
        for idx in sorted(rng.sample(range(n_existing), min(k, n_existing))):
            u = users[idx]
            u.city = (u.city + rng.randint(1, len(_CITIES) - 1)) % len(_CITIES)
            u.street_no, u.street = rng.randint(1, 250), rng.randrange(len(_STREETS))
            self._new_record(u, d * _DAY + rng.randrange(_DAY))
            changed[u.uid] = u
        while n_existing < len(users) and users[n_existing].signup == d:
            u = users[n_existing]
            self._new_record(u, d * _DAY + u.signup_sec)
            changed[u.uid] = u
            self._schedule(n_existing, d)
            n_existing += 1
        self._users_lines(users[:n_existing] if self.snapshot else list(changed.values()), d)
        return n_existing

    def _users_lines(self, users: list[_User], arrival: int) -> None:
        for u in users:
            self._emit("users", u.record, u.updated, u.updated // _DAY, clean_line=u.line,
                       arrival=arrival)

    def _new_record(self, u: _User, t: int) -> None:
        city = _CITIES[u.city]
        u.record = {
            "event_id": self._event_id(), "event_type": "users", "event_ts": self._ts(t),
            "user_id": u.uid,
            "email": f"{_FIRST_SLUG[u.first]}.{_LAST_SLUG[u.last]}.{u.tag:04x}@example.com",
            "name": f"{_FIRST[u.first]} {_LAST[u.last]}",
            "address": f"{u.street_no} {_STREETS[u.street]} Street, {city}",
            "signup_date": (self.start + timedelta(days=u.signup)).isoformat(), "city": city}
        u.line = _ENCODER.encode(u.record)
        u.updated = t

    def _order(self, idx: int, d: int) -> None:
        """Emit one order with its delivery and rating, and feed bad experiences into churn.

        Hot path: draws use ``random()`` arithmetic instead of ``randint``/``choices``,
        which roughly halves generation time.
        """
        rand, u = self.rng.random, self.users[idx]
        if d >= u.churn:
            return
        sec = bisect(_HOUR_CUM, rand() * _HOUR_CUM[-1]) * 3600 + int(rand() * 3600)
        if d == u.signup:  # first order cannot precede the signup
            sec = max(sec, min(_DAY - 1, u.signup_sec + 60 + int(rand() * 3540)))
        t = d * _DAY + sec
        items = 1 + int(rand() * 6)
        amount = round(items * (8.0 + rand() * (80.0 / 6 - 8.0)), 2)
        oid = f"ord_{_mix48(self.order_salt + self.order_seq):012x}"
        self.order_seq += 1
        shops = self.restaurants[u.city]
        rec: dict[str, Any] = {
            "event_id": self._event_id(), "event_type": "order_placed", "event_ts": self._ts(t),
            "user_id": u.uid, "order_id": oid, "restaurant_id": shops[int(rand() * len(shops))],
            "city": _CITIES[u.city]}
        if self.rates.schema_drift and d % 7 == 5:
            rec[DRIFT_RENAMED_FIELD[2]] = amount
            self.faults["renamed_field"] += 1
        else:
            rec["amount"] = amount
        rec["items"] = items
        if self.rates.schema_drift and d >= self.days // 3:
            rec[DRIFT_NEW_FIELD[1]] = round(rand() * 10.0, 2)
        self._emit("order_placed", rec, t, d)
        if rand() < 0.97:
            promised = 30 + int(rand() * 16)
            late = rand() < 0.15
            if late:
                actual = promised + 1 + int(rand() * (90 - promised))
            else:
                actual = 15 + int(rand() * (promised - 14))
            td = t + actual * 60
            self._emit("delivery_completed", {
                "event_id": self._event_id(), "event_type": "delivery_completed",
                "event_ts": self._ts(td), "user_id": u.uid, "order_id": oid,
                "courier_id": self.couriers[int(rand() * len(self.couriers))],
                "promised_minutes": promised, "actual_minutes": actual}, td, td // _DAY)
            if late and rand() < 0.1:
                u.churn = min(u.churn, td // _DAY + 1 + int(rand() * 5))
            if rand() < 0.45:
                cum = _RATING_CUM_LATE if late else _RATING_CUM_ON_TIME
                rating = 1 + bisect(cum, rand() * cum[-1])
                tr = td + 300 + int(rand() * 35_701)
                self._emit("rating_submitted", {
                    "event_id": self._event_id(), "event_type": "rating_submitted",
                    "event_ts": self._ts(tr), "user_id": u.uid, "order_id": oid,
                    "rating": rating}, tr, tr // _DAY)
                if rating <= 2 and rand() < 0.1:
                    u.churn = min(u.churn, tr // _DAY + 1 + int(rand() * 5))
        self._schedule(idx, d + 1)

    def _emit(self, source: str, rec: dict[str, Any], t: int, day: int,
              clean_line: str | None = None, arrival: int | None = None) -> None:
        """Apply faults to one event and route its line(s) to arrival-day buffers.

        ``day`` is the day the event belongs to; it arrives on ``arrival`` (default: that
        day), later if the line is made late. ``clean_line``, when given, is ``rec``
        already encoded, and ``rec`` is kept as it is: a fault changes a copy. Events whose
        day falls after the window (deliveries/ratings of the last day's late-evening
        orders) are dropped: the observation window simply ends.
        """
        if day >= self.days:
            return
        rng, rates = (self.users_rng if source == "users" else self.rng), self.rates
        kind = None
        truncate = False
        if self.dirty:
            r = rng.random()
            if clean_line is not None and r < rates.malformed + rates.null_key + rates.out_of_range:
                rec = dict(rec)  # the caller's record stays clean
            if r < rates.malformed:
                kind = "malformed"
                truncate = rng.random() < 0.5
                if not truncate:
                    self._wrong_type(source, rec)
            elif r < rates.malformed + rates.null_key:
                kind = "null_key"
                rec[rng.choice(("event_id", "user_id"))] = None
            elif source != "users" and r < rates.malformed + rates.null_key + rates.out_of_range:
                kind = "out_of_range"
                self._out_of_range(source, rec, t)
        line = clean_line if kind is None and clean_line is not None else _ENCODER.encode(rec)
        if truncate:  # cut before the closing brace, so the line is never valid JSON
            line = line[: rng.randint(len(line) // 3, len(line) - 1)]
        arrival = day if arrival is None else arrival
        if kind is None and source != "users" and rates.late and rng.random() < rates.late:
            arrival += rng.randint(1, MAX_LATE_DAYS)
            self.faults["late"] += 1
        if kind is not None:
            self.faults[kind] += 1
        self._put(arrival, source, t, line)
        if kind is None and rates.duplicate and rng.random() < rates.duplicate:
            dup = arrival + 1 if rng.random() < 0.5 and arrival < self.max_arrival else arrival
            self._put(dup, source, t, line)
            self.faults["duplicate"] += 1

    def _wrong_type(self, source: str, rec: dict[str, Any]) -> None:
        """Replace a numeric (or date) field by a value of the wrong JSON type."""
        rng = self.rng
        if source == "order_placed":
            key = "items" if rng.random() < 0.5 else ("amount" if "amount" in rec
                                                      else DRIFT_RENAMED_FIELD[2])
        elif source == "delivery_completed":
            key = rng.choice(("promised_minutes", "actual_minutes"))
        elif source == "rating_submitted":
            key = "rating"
        else:
            rec["signup_date"] = int(rec["signup_date"].replace("-", ""))
            return
        rec[key] = rng.choice(_WORDS)

    def _out_of_range(self, source: str, rec: dict[str, Any], t: int) -> None:
        """Push one value outside its domain: negative amount/duration, bad rating, future ts."""
        rng = self.rng
        if rng.random() < 0.5:
            rec["event_ts"] = self._ts(t + rng.randint(*_FUTURE_DAYS) * _DAY + rng.randrange(_DAY))
        elif source == "order_placed":
            key = "amount" if "amount" in rec else DRIFT_RENAMED_FIELD[2]
            rec[key] = -rec[key]
        elif source == "delivery_completed":
            rec["actual_minutes"] = -rec["actual_minutes"]
        else:
            rec["rating"] = rng.choice((0, 6, 7, 8, 9))

    def _put(self, arrival: int, source: str, t: int, line: str) -> None:
        self.pending.setdefault(arrival, {}).setdefault(source, []).append((t, line))
        self.lines[source] += 1

    def _flush(self, arrival: int) -> None:
        """Write all four files of an arrival day, lines ordered by event time (stable)."""
        buffers = self.pending.pop(arrival, {})
        day = self.start + timedelta(days=arrival)
        for source in SOURCES:
            entries = buffers.get(source, [])
            entries.sort(key=lambda e: e[0])
            path = landing_file(self.dir, source, day)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written under a hidden name, which landing scans skip, then
            # renamed: a file under its real name is always whole.
            partial = path.with_name(f".{path.name}.partial")
            with partial.open("w", encoding="utf-8", newline="\n", buffering=1 << 20) as fh:
                fh.writelines(f"{line}\n" for _, line in entries)
            if path.exists() and not filecmp.cmp(partial, path, shallow=False):
                self.replaced.append(path.relative_to(self.dir).as_posix())
            os.replace(partial, path)
            self.files += 1


def generate(landing_dir: Path, *, seed: int, users: int, days: int, start: date,
             faults: FaultRates = FaultRates(), users_feed: str = "snapshot") -> GenerationSummary:
    """Write the BiteBridge landing files for ``days`` days starting at ``start``.

    ``users_feed`` is ``"snapshot"`` (each day's users file holds every user signed up
    by then) or ``"changes"`` (only the users records that changed that day). The same
    arguments always produce byte-identical files, so pipeline results can be compared
    run to run. Existing files with the same names are overwritten; those whose content
    changed are listed in the summary's ``replaced``.
    """
    if users < 1 or days < 1:
        raise ValueError(f"users and days must be positive, got users={users}, days={days}")
    check_dates(start, days)
    if users_feed not in USERS_FEEDS:
        raise ValueError(f"users_feed must be one of {USERS_FEEDS}, got {users_feed!r}")
    return _Generator(Path(landing_dir), seed, users, days, start, faults, users_feed).run()


def check_dates(start: date, days: int) -> None:
    """Raise ValueError unless every date a generation of ``days`` days from ``start`` writes exists.

    Checked before anything is written: a date past year 9999 would stop a
    generation part way, and a long one only after hours.
    """
    reach = MAX_LATE_DAYS + _FUTURE_DAYS[1] + 1
    last_day = days - 1 + reach
    try:
        start - timedelta(days=_SIGNUP_DAYS_BEFORE)
        start + timedelta(days=last_day)
    except OverflowError:
        raise ValueError(
            f"start {start} with {days} day(s) gives dates outside years 1 to 9999: sign-ups go back "
            f"{_SIGNUP_DAYS_BEFORE} days before the start, and out-of-range timestamps reach "
            f"{reach} days after the last day"
        ) from None


# In the landing directory while a generation is writing it; see generation_interrupted.
GENERATING_MARKER = ".generating"


def generation_interrupted(landing_dir: Path) -> bool:
    """Whether a generation into ``landing_dir`` began and did not finish (its files are a part)."""
    return (Path(landing_dir) / GENERATING_MARKER).exists()


def landing_file(landing_dir: Path, source: str, arrival_day: date) -> Path:
    """Path of one source's file for one arrival day (the bronze ingestion unit)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    return Path(landing_dir) / source / f"{arrival_day:%Y-%m-%d}.jsonl"


@dataclass(frozen=True)
class LandingScan:
    """What one listing of the sources' landing folders found."""

    days: list[date]
    """Sorted distinct arrival days with at least one landing file."""
    unrecognized: list[Path]
    """Files not named ``YYYY-MM-DD.jsonl``, which no run ingests; hidden files (left by tools) left out."""
    ahead: list[date]
    """Arrival days after the scan's ``until``, left out of ``days``."""


def scan_landing(landing_dir: Path, until: date | None = None) -> LandingScan:
    """List the sources' landing folders once, for both the days to load and the misnamed files.

    A folder or file beside the sources' folders (a source misspelt, a file one
    level too high) is misnamed too. Days after ``until`` go to ``ahead``.
    """
    days: set[date] = set()
    unrecognized: list[Path] = []
    if Path(landing_dir).is_dir():
        # A source's name that is a file, not a folder, holds nothing a run takes either.
        unrecognized.extend(
            path for path in Path(landing_dir).iterdir()
            if (path.name not in SOURCES or not path.is_dir()) and not path.name.startswith(".")
        )
    for source in SOURCES:
        folder = Path(landing_dir) / source
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            day = _arrival_day(path)
            if day is not None:
                days.add(day)
            elif not path.name.startswith("."):
                unrecognized.append(path)
    taken = sorted(day for day in days if until is None or day <= until)
    return LandingScan(taken, sorted(unrecognized), sorted(days.difference(taken)))


def today_utc() -> date:
    """Today's date in UTC, the time zone of arrival days."""
    return datetime.now(UTC).date()


def arrival_days(landing_dir: Path) -> list[date]:
    """Sorted distinct arrival days with at least one landing file, for incremental loads."""
    return scan_landing(landing_dir).days


def _arrival_day(path: Path) -> date | None:
    """The arrival day a landing file's name gives, if it is one this module writes."""
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    try:
        return parse_iso_date(path.stem)
    except ValueError:
        return None
