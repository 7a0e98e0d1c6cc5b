import hashlib
import hmac
import json
from datetime import date, datetime

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward import silver
from lakeward.config import PipelineSettings
from lakeward.privacy.keys import fingerprint
from lakeward.silver import conform, dedupe, pseudonymize, quarantine_records, validate

BRONZE_ORDER = (
    "event_id string, event_type string, event_ts string, user_id string, order_id string, "
    "restaurant_id string, city string, amount string, items string, _rescued_data string, "
    "_arrival_date date, _ingested_at timestamp, _source_file string, _line_no long, _batch_id string"
)
AT = datetime(2026, 1, 3, 1, 0, 0)


def _order(event_id, ts="2026-01-02T10:00:00Z", user="usr_aaaaaaaaaaaa", amount="10.5",
           items="2", rescued=None, arrival=date(2026, 1, 2), line=1, event_type="order_placed",
           city="Paris"):
    return (event_id, event_type, ts, user, "ord_1", "rst_1", city, amount, items, rescued,
            arrival, AT, "landing/order_placed/x.jsonl", line, "b1")


def _checked(spark: SparkSession, rows):
    df = spark.createDataFrame(rows, BRONZE_ORDER)
    return validate(conform(df, "order_placed"), "order_placed", PipelineSettings())


def test_conform_resolves_renamed_and_new_fields(spark: SparkSession) -> None:
    rescued = json.dumps({"total_amount": "20.25", "tip_amount": "1.5"})
    row = _checked(spark, [_order("e1", amount=None, rescued=rescued)]).first()
    assert str(row["amount"]) == "20.25" and str(row["tip_amount"]) == "1.50"
    assert row["event_ts"] == datetime(2026, 1, 2, 10, 0, 0)
    assert row["event_date"] == date(2026, 1, 2)
    assert row["_reason"] is None


def test_validate_names_every_broken_rule(spark: SparkSession) -> None:
    rows = [
        _order("ok", line=1),
        _order(None, line=2),
        _order("e3", user=None, line=3),
        _order("e4", amount="twelve", line=4),
        _order("e5", amount="-3", items="0", line=5),
        _order("e6", ts="2027-06-01T00:00:00Z", line=6),
        _order("e7", ts="yesterday", line=7),
        _order("e8", ts="2025-12-01T00:00:00Z", line=8),
        _order(" ", line=9),
        _order("e10", user="", line=10),
        # Checked as sent, stored rounded to cents: neither is 1000.00 or 0.00.
        _order("e11", amount="1000.004", line=11),
        _order("e12", amount="-0.001", line=12),
        _order("e13", amount="999.996", line=13),
        _order("e14", ts="2026-01-02T10:00:00", line=14),  # no offset: which instant?
        _order("e15", ts="2026-01-02T10:00:00.1234567890Z", line=15),  # past nanoseconds
        _order("\t", user="\u00a0", line=16),
        _order("e17", amount="1000.000000000000000001", line=17),  # above 1000, were it a double
        _order("e18", amount="1e40", line=18),
        _order("e19", amount="12345678901.5", line=19),
        _order('{"id": 1}', user="[1, 2]", line=20),
        _order("{e21", user="[usr", line=21),  # text, not JSON
        _order("e22", amount=None, line=22),  # under a name silver does not know
        _order("e23", event_type="delivery_completed", line=23),
        _order("e24", event_type=None, line=24),  # the file says what it is
        _order("e25", city='{"name": "Paris"}', line=25),
        _order("e26 ", user="usr_a\u200b", line=26),
        _order("e 27", user="usr\tb", line=27),
    ]
    reasons = {r["_line_no"]: r["_reason"] for r in _checked(spark, rows).collect()}
    assert reasons == {
        1: None,
        2: "null_key:event_id",
        3: "null_key:user_id",
        4: "invalid_type:amount",
        5: "out_of_range:amount;out_of_range:items",
        6: "future_event_ts",
        7: "invalid_type:event_ts",
        8: "beyond_allowed_lateness",
        9: "empty_key:event_id",
        10: "empty_key:user_id",
        11: "out_of_range:amount",
        12: "out_of_range:amount",
        13: None,
        14: "invalid_type:event_ts",
        15: "invalid_type:event_ts",
        16: "empty_key:event_id;empty_key:user_id",
        17: "out_of_range:amount",
        18: "invalid_type:amount",
        19: "invalid_type:amount",
        20: "invalid_type:event_id;invalid_type:user_id",
        21: None,
        22: "missing:amount",
        23: "wrong_event_type",
        24: None,
        25: "invalid_type:city",
        26: "invalid_key:event_id;invalid_key:user_id",
        27: "invalid_key:user_id",
    }


def test_event_ts_is_any_iso_8601_instant_with_an_offset(spark: SparkSession) -> None:
    sent = ["2026-01-02T10:00:00Z", "2026-01-02T10:00:00.5Z", "2026-01-02T12:00:00.123456+02:00",
            "2026-01-02T12:00:00+02", "2026-01-02T05:30:00-0430", "2026-01-02T10:00:00z",
            # Finer than Spark keeps (.NET writes seven digits): cut to microseconds, as a CAST does.
            "2026-01-02T10:00:00.1234567Z", "2026-01-02T12:00:00.999999999+02:00"]
    rows = _checked(spark, [_order(f"e{i}", ts=ts, line=i) for i, ts in enumerate(sent)]).collect()
    got = {r["_line_no"]: (r["event_ts"], r["_reason"]) for r in rows}
    assert got == {
        0: (datetime(2026, 1, 2, 10, 0, 0), None),
        1: (datetime(2026, 1, 2, 10, 0, 0, 500000), None),
        2: (datetime(2026, 1, 2, 10, 0, 0, 123456), None),
        3: (datetime(2026, 1, 2, 10, 0, 0), None),
        4: (datetime(2026, 1, 2, 10, 0, 0), None),
        5: (datetime(2026, 1, 2, 10, 0, 0), None),
        6: (datetime(2026, 1, 2, 10, 0, 0, 123456), None),
        7: (datetime(2026, 1, 2, 10, 0, 0, 999999), None),
    }
    cast = spark.createDataFrame([(sent[6],)], "ts string").select(F.col("ts").cast("timestamp")).first()
    assert cast is not None and cast[0] == got[6][0]


def test_dedupe_keeps_first_arrival(spark: SparkSession) -> None:
    rows = [
        _order("e1", arrival=date(2026, 1, 3), line=1),
        _order("e1", arrival=date(2026, 1, 2), line=9),
        _order("e1", arrival=date(2026, 1, 2), line=4),
        _order("e2", line=5),
    ]
    kept = dedupe(_checked(spark, rows)).select("event_id", "_arrival_date", "_line_no").collect()
    assert sorted(tuple(r) for r in kept) == [("e1", date(2026, 1, 2), 4), ("e2", date(2026, 1, 2), 5)]


def test_one_copy_per_line_keeps_the_copy_of_the_recorded_run_then_the_earliest(spark: SparkSession) -> None:
    early, recorded, late = datetime(2026, 1, 3, 0, 59), AT, datetime(2026, 1, 3, 1, 1)
    rows = spark.createDataFrame(
        [("b1", 1, early, "x"), ("b1", 1, recorded, "kept"), ("b1", 1, late, "y"),
         ("b1", 2, late, "only"), ("b2", 1, late, "y"), ("b2", 1, early, "earliest"),
         ("b3", 1, late, "y"), ("b3", 1, early, "not in the ledger")],
        "_batch_id string, _line_no long, _ingested_at timestamp, tag string",
    )
    recorder = spark.createDataFrame(
        [("b1", recorded), ("b2", recorded)], "_batch_id string, _recorded_at timestamp"
    )
    kept = silver.one_copy_per_line(rows, recorder)
    assert sorted(kept.columns) == sorted(rows.columns)
    assert sorted((r["_batch_id"], r["_line_no"], r["tag"]) for r in kept.collect()) == [
        ("b1", 1, "kept"), ("b1", 2, "only"), ("b2", 1, "earliest"), ("b3", 1, "not in the ledger"),
    ]


def test_pseudonymize_and_quarantine_record_hold_no_raw_id(spark: SparkSession) -> None:
    checked = pseudonymize(_checked(spark, [_order("e4", amount="twelve")]), b"k" * 32)
    assert "user_id" not in checked.columns
    record = quarantine_records(checked, "order_placed", AT).first()
    assert record["reason"] == "invalid_type:amount"
    assert "usr_aaaaaaaaaaaa" not in json.dumps(record.asDict(), default=str)
    assert json.loads(record["record"])["amount"] == "<text of 6 characters>"
    assert len(record["user_key"]) == 64


def test_pseudonymize_replaces_each_identifier_of_a_person_with_its_keyed_hash(spark: SparkSession) -> None:
    key = b"k" * 32
    rows = spark.createDataFrame(
        [("usr_1", "cur_1", 7), (None, "cur_2", 8)], "user_id string, courier_id string, n int"
    )
    got = pseudonymize(rows, key)
    assert sorted(got.columns) == ["courier_key", "n", "user_key"]

    def keyed(value: bytes) -> str:
        return hmac.new(key, value, hashlib.sha256).hexdigest()

    expected = {7: (keyed(b"usr_1"), keyed(b"cur_1")), 8: (None, keyed(b"cur_2"))}
    assert {r["n"]: (r["user_key"], r["courier_key"]) for r in got.collect()} == expected


def test_a_quarantine_record_copies_numbers_dates_and_times_only(spark: SparkSession) -> None:
    rows = [
        _order("e1", amount="1000.004", items="0", line=1),
        _order("e2", city='{"email": "in.city@example.org"}', ts="yesterday", line=2),
        _order(" mail@example.org", event_type="users", line=3),
        _order("e4", event_type="mail@example.org", items="[1]", line=4),
    ]
    refused = quarantine_records(pseudonymize(_checked(spark, rows), b"k" * 32), "order_placed", AT)
    records = {
        r["_line_no"]: (r["event_id"], r["reason"], json.loads(r["record"])) for r in refused.collect()
    }
    text = {"order_id": "<text of 5 characters>", "restaurant_id": "<text of 5 characters>"}
    assert records == {
        1: ("e1", "out_of_range:amount;out_of_range:items", {
            "event_id": "e1", "event_type": "order_placed", "event_ts": "2026-01-02T10:00:00Z", **text,
            "city": "<text of 5 characters>", "amount": "1000.004", "items": "0"}),
        2: ("e2", "invalid_type:event_ts;invalid_type:city", {
            "event_id": "e2", "event_type": "order_placed", "event_ts": "<text of 9 characters>", **text,
            "city": "<object of 32 characters>", "amount": "10.5", "items": "2"}),
        3: ("<text of 17 characters>", "invalid_key:event_id;wrong_event_type", {
            "event_id": "<text of 17 characters>", "event_type": "users", "event_ts": "2026-01-02T10:00:00Z",
            **text, "city": "<text of 5 characters>", "amount": "10.5", "items": "2"}),
        4: ("e4", "wrong_event_type;invalid_type:items", {
            "event_id": "e4", "event_type": "<text of 16 characters>", "event_ts": "2026-01-02T10:00:00Z",
            **text, "city": "<text of 5 characters>", "amount": "10.5", "items": "<array of 3 characters>"}),
    }


def test_a_users_row_with_shifted_values_leaves_none_of_them_in_its_quarantine_record(
    spark: SparkSession,
) -> None:
    schema = (
        "event_id string, event_type string, event_ts string, user_id string, email string, name string, "
        "address string, signup_date string, city string, _rescued_data string, _arrival_date date, "
        "_ingested_at timestamp, _source_file string, _line_no long, _batch_id string"
    )
    shifted = ("sh1", "users", "2026-01-02T10:00:00Z", "usr_shifted1", "2025-03-03", "Oslo", "Shifted Name",
               "shifted.person@example.net", "7 Shift Road, Bergen", None, date(2026, 1, 2), AT,
               "landing/users/x.jsonl", 1, "b1")
    checked = pseudonymize(validate(conform(spark.createDataFrame([shifted], schema), "users"), "users",
                                    PipelineSettings()), b"k" * 32)
    record = quarantine_records(checked, "users", AT).first()
    assert record["reason"] == "invalid_type:signup_date"
    assert json.loads(record["record"]) == {
        "event_id": "sh1", "event_type": "users", "event_ts": "2026-01-02T10:00:00Z",
        "signup_date": "<text of 26 characters>", "city": "<text of 20 characters>",
    }


def test_a_user_without_signup_date_is_refused_not_left_for_the_gate(spark: SparkSession) -> None:
    # The users contract requires signup_date: a row without it would fail its day's gate on every run.
    schema = (
        "event_id string, event_type string, event_ts string, user_id string, email string, name string, "
        "address string, signup_date string, city string, _rescued_data string, _arrival_date date, "
        "_ingested_at timestamp, _source_file string, _line_no long, _batch_id string"
    )

    def user(line: int, signup: str | None) -> tuple:
        return (f"u{line}", "users", "2026-01-02T10:00:00Z", "usr_aaaaaaaaaaaa", "a@b.c", "A", "x",
                signup, "Paris", None, date(2026, 1, 2), AT, "landing/users/x.jsonl", line, "b1")

    df = spark.createDataFrame([user(1, "2025-12-01"), user(2, None), user(3, "soon")], schema)
    checked = validate(conform(df, "users"), "users", PipelineSettings())
    reasons = {r["_line_no"]: r["_reason"] for r in checked.collect()}
    assert reasons == {1: None, 2: "missing:signup_date", 3: "invalid_type:signup_date"}


def test_a_key_other_than_the_one_silver_wrote_with_is_refused_naming_fingerprints_only() -> None:
    key, other = b"k" * 32, b"j" * 32
    silver.refuse_other_key({fingerprint(key): ["order_placed", "users"]}, key)
    silver.refuse_other_key({}, other)
    with pytest.raises(silver.KeyChangedError) as refused:
        silver.refuse_other_key({fingerprint(key): ["order_placed", "users"]}, other)
    assert str(refused.value).startswith(
        "silver holds rows pseudonymized with another key than this run's "
        f"(fingerprint {fingerprint(other)}): "
        f"order_placed, users under the key whose fingerprint is {fingerprint(key)}. "
    )
    assert "kkkk" not in str(refused.value) and "jjjj" not in str(refused.value)
    assert "whitespace" not in str(refused.value)
    with pytest.raises(silver.KeyChangedError, match=r"key starts or ends with whitespace \(a newline"):
        silver.refuse_other_key({fingerprint(key): ["users"]}, key + b"\n")
