import json
import random
import zlib
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward import bronze
from lakeward.bronze import (
    BLANK,
    DUPLICATE_KEY,
    INVALID_UTF8,
    MALFORMED,
    NOT_AN_OBJECT,
    line_bases,
    number_lines,
    parse_lines,
    split_sizes,
)
from lakeward.config import Settings


def test_number_lines_across_files_and_splits(spark: SparkSession) -> None:
    # Two files; file a was read as two splits whose ids are not contiguous.
    rows = [
        ("a0", "a", 0, 100, None), ("a1", "a", 0, 101, "blank_line"),
        ("a2", "a", 64, 8589934592, None), ("a3", "a", 64, 8589934593, None),
        ("a4", "a", 64, 8589934594, None),
        ("b0", "b", 0, 17179869184, None),
    ]
    lines = spark.createDataFrame(rows, "value string, _name string, _block long, _mid long, _reason string")
    lines = lines.withColumn("_batch_id", F.upper("_name"))
    splits = sorted(split_sizes(lines).collect(), key=tuple, reverse=True)
    sizes = [tuple(r) for r in splits]
    crc = {value: zlib.crc32(value.encode()) for value, *_ in rows}
    assert sizes == [("b", 0, "B", 17179869184, 1, 0, crc["b0"]),
                     ("a", 64, "A", 8589934592, 3, 0, crc["a2"] + crc["a3"] + crc["a4"]),
                     ("a", 0, "A", 100, 2, 1, crc["a0"] + crc["a1"])]
    # Listed out of order: the splits of a file are numbered by their offsets.
    bases = line_bases(splits)
    expected = {"a0": ("A", 1), "a1": ("A", 2), "a2": ("A", 3), "a3": ("A", 4), "a4": ("A", 5),
                "b0": ("B", 1)}
    # Few splits are looked up in an expression, many through a join: both give the same numbers.
    many = {**bases, **{(f"x{i}", 0): i for i in range(bronze._INLINE_KEYS)}}
    for given in (bases, many):
        got = {r["value"]: (r["_batch_id"], r["_line_no"]) for r in number_lines(lines, given).collect()}
        assert got == expected


def test_attached_values_are_the_same_looked_up_inline_or_joined(spark: SparkSession) -> None:
    df = spark.createDataFrame([("a", 1), ("b", 2), ("c", 3)], "_name string, n long")
    rows = {("a",): ("x", date(2026, 3, 1)), ("b",): (None, date(2026, 3, 2))}
    schema = "_name string, path string, day date"
    inline = bronze._attach(df, ["_name"], rows, schema)
    many = {**rows, **{(f"z{i}",): ("z", None) for i in range(bronze._INLINE_KEYS)}}
    joined = bronze._attach(df, ["_name"], many, schema)
    expected = spark.createDataFrame([("a", 1, "x", date(2026, 3, 1)), ("b", 2, None, date(2026, 3, 2))],
                                     "_name string, n long, path string, day date")
    for got in (inline, joined):
        assert_df_equality(got.select(*expected.columns), expected, ignore_row_order=True,
                           ignore_nullable=True)


def test_parse_lines_keeps_text_and_rescues_unknown_fields(spark: SparkSession) -> None:
    good = json.dumps({"event_id": "e1", "amount": 12.50, "items": 3, "tip_amount": 1.5, "x": None})
    lines = [good, '{"event_id": "e2", "amount": "twelve"', "", "[1, 2]", '{"event_id": null}',
             "\r", "42", "null"]
    df = spark.createDataFrame([(v, i + 1) for i, v in enumerate(lines)], "value string, _line_no long")
    out = {r["_line_no"]: r for r in parse_lines(df, ["event_id", "amount", "items"]).collect()}
    assert out[1]["event_id"] == "e1" and out[1]["amount"] == "12.5" and out[1]["items"] == "3"
    assert json.loads(out[1]["_rescued_data"]) == {"tip_amount": "1.5", "x": None}
    assert out[1]["_reason"] is None
    assert out[2]["_reason"] == MALFORMED
    assert out[3]["_reason"] == BLANK
    assert out[4]["_reason"] == NOT_AN_OBJECT
    assert out[5]["_reason"] is None and out[5]["event_id"] is None and out[5]["_rescued_data"] is None
    assert [out[n]["_reason"] for n in (6, 7, 8)] == [BLANK, NOT_AN_OBJECT, NOT_AN_OBJECT]


def test_a_line_is_one_json_object_and_nothing_after_it(spark: SparkSession) -> None:
    # Spark's parser stops after the first value; these must not pass as that value.
    more = ['{"event_id": "e1"}{"event_id": "e2"}', '{"event_id": "e1"} trailing', '{"event_id": "e1"}[1]',
            '{"event_id": "e1"},{"event_id": "e2"}', '{"event_id": "e1"}]}', '{"event_id": "e1"}}x',
            '{"event_id": "e1"}\r{"event_id": "e2"}', "{'event_id': 'e1'}"]
    whole = ['{"event_id": "e1"}  ', '{"event_id": "x}{y"}', '{"event_id": "e1", "n": {"a": [1, {"b": 2}]}}',
             '{"event_id": "}"}\t', '{"event_id": "e1"}\r']
    df = spark.createDataFrame([(v, i) for i, v in enumerate(more + whole)], "value string, _line_no long")
    out = {r["_line_no"]: r for r in parse_lines(df, ["event_id"]).collect()}
    assert [out[i]["_reason"] for i in range(len(more))] == [MALFORMED] * len(more)
    assert [out[len(more) + i]["_reason"] for i in range(len(whole))] == [None] * len(whole)
    assert [out[len(more) + i]["event_id"] for i in range(len(whole))] == ["e1", "x}{y", "e1", "}", "e1"]


def test_a_line_that_was_not_utf8_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    # Two user ids that differ only in a byte that is not UTF-8 would become one user.
    path = tmp_path / "lines.jsonl"
    values = [b"u\xff1", b"u\xfe1", b"\xc3\xa9", b"\xef\xbf\xbd"]
    path.write_bytes(b"".join(b'{"user_id": "' + value + b'"}\n' for value in values))
    df = spark.read.text(str(path)).withColumn("_line_no", F.monotonically_increasing_id())
    out = [(r["_reason"], r["user_id"]) for r in parse_lines(df, ["user_id"]).orderBy("_line_no").collect()]
    # U+FFFD written as UTF-8 is a character like any other.
    assert [reason for reason, _ in out] == [INVALID_UTF8, INVALID_UTF8, None, None]
    assert [user for _, user in out[2:]] == ["\u00e9", "\ufffd"]


def test_a_line_escaping_a_lone_surrogate_is_refused(spark: SparkSession) -> None:
    # Spark writes a lone surrogate as "?": the first three user ids would be one user.
    refused = [r'{"user_id": "u\ud800"}', r'{"user_id": "u\udbff"}', r'{"user_id": "u\udc00x"}',
               r'{"user_id": "u\ud800\\udc00"}',  # a surrogate, then an escaped backslash
               r'{"user_id": "u", "note": "\\\ud800"}']  # an escaped backslash, then a surrogate
    kept = {r'{"user_id": "u?"}': "u?",
            r'{"user_id": "u\ud83d\ude00"}': "u\U0001f600",  # a pair: one character
            r'{"user_id": "u\\ud800"}': "u\\ud800",  # an escaped backslash, then text
            r'{"user_id": "u\u00e9"}': "u\u00e9"}
    lines = [*refused, *kept]
    df = spark.createDataFrame([(v, i) for i, v in enumerate(lines)], "value string, _line_no long")
    out = [(r["_reason"], r["user_id"]) for r in parse_lines(df, ["user_id"]).orderBy("_line_no").collect()]
    assert [reason for reason, _ in out] == [INVALID_UTF8] * len(refused) + [None] * len(kept)
    assert [user for _, user in out[len(refused):]] == list(kept.values())


def test_a_byte_order_mark_at_the_start_of_any_line_is_not_part_of_the_json(
    spark: SparkSession, tmp_path: Path
) -> None:
    # What `cat a.jsonl b.jsonl` gives when b.jsonl starts with a byte-order mark.
    path = tmp_path / "joined.jsonl"
    bom = b"\xef\xbb\xbf"
    path.write_bytes(bom + b'{"event_id": "e1"}\n{"event_id": "e2"}\n' + bom + b'{"event_id": "e3"}\n'
                     + bom + b"\n" + b'{"event_id": "e5\xef\xbb\xbf"}\n')
    df = spark.read.text(str(path), lineSep="\n").withColumn("_line_no", F.monotonically_increasing_id())
    out = [(r["_reason"], r["event_id"]) for r in parse_lines(df, ["event_id"]).orderBy("_line_no").collect()]
    assert out == [(None, "e1"), (None, "e2"), (None, "e3"), (BLANK, None), (None, "e5\ufeff")]


def test_a_line_that_names_a_key_twice_is_refused(spark: SparkSession) -> None:
    twice = ['{"event_id": "e1", "event_id": "e2"}', '{"a": 1, "event_id": "e1", "a": 2}',
             '{"a": {"b": 1}, "a": {"b": 1}}', '{"event_id" : "e1","event_id":null}']
    once = ['{"event_id": "e1", "n": {"event_id": "e2"}}', '{"event_id": "e1", "t": "\\":\\":"}',
            '{"event_id": "e1", "l": [{"a": 1}, {"a": 2}]}', '{"event_id": "e1"}']
    df = spark.createDataFrame([(v, i) for i, v in enumerate(twice + once)], "value string, _line_no long")
    out = {r["_line_no"]: r["_reason"] for r in parse_lines(df, ["event_id"]).collect()}
    assert [out[i] for i in range(len(twice))] == [DUPLICATE_KEY] * len(twice)
    assert [out[len(twice) + i] for i in range(len(once))] == [None] * len(once)


def test_a_line_that_names_a_key_twice_keeps_sparks_text_of_each(spark: SparkSession) -> None:
    # Its objects and arrays are found by key when numbers are kept as written: each would be the first.
    line = '{"a": [1], "a": [2.50], "b": 1.50}'
    out = parse_lines(spark.createDataFrame([(line, 1)], "value string, _line_no long"), []).collect()[0]
    assert (out["_reason"], out["_rescued_data"]) == (DUPLICATE_KEY, '{"a":"[1]","a":"[2.5]","b":"1.5"}')


def test_parse_lines_keeps_its_input_and_adds_the_documented_columns(spark: SparkSession) -> None:
    df = spark.createDataFrame([('{"a": "1", "b": 2}', 1), ("{", 2)], "value string, _line_no long")
    out = parse_lines(df, ["a"])
    assert out.columns == ["value", "_line_no", "a", "_rescued_data", "_reason"]
    assert_df_equality(out.select("value", "_line_no"), df, ignore_row_order=True)


def test_a_number_keeps_the_text_it_was_written_in(spark: SparkSession) -> None:
    line = ('{"event_id": 7, "amount": 12.50, "big": 1e400, "fine": 0.1000000000000000055511151231257827, '
            '"zero": -0, "e": 1E+2, "nan": NaN, "inf": -Infinity, "note": "a, 1", "n": {"h": 1.50}, '
            '"l": [1.0, 2], "s": "{1.50}", "t": true, "u": null}')
    spaced = '{ "event_id" : "e2" ,"amount":1.50 }'
    # Text that reads like a number value inside a string: the line keeps Spark's text, unchanged.
    inside = '{"event_id": "e3", "amount": 1.50, "note": "x: 1, y\\"2 [3]"}'
    nested = '{"event_id": "e4", "n": {"h": 1.50}, "ts": "2026-01-01T10:20:30Z"}'
    rows = [(line, 1), (spaced, 2), (inside, 3), (nested, 4)]
    df = spark.createDataFrame(rows, "value string, _line_no long")
    out = {r["_line_no"]: r for r in parse_lines(df, ["event_id", "amount", "note", "n"]).collect()}
    assert (out[1]["event_id"], out[1]["amount"], out[1]["note"]) == ("7", "12.50", "a, 1")
    # An object keeps Spark's compact text; its numbers are not quoted.
    assert out[1]["n"] == '{"h":1.5}'
    assert json.loads(out[1]["_rescued_data"]) == {
        "big": "1e400", "fine": "0.1000000000000000055511151231257827", "zero": "-0", "e": "1E+2",
        "nan": "NaN", "inf": "-Infinity", "l": "[1.0,2]", "s": "{1.50}", "t": "true", "u": None,
    }
    assert (out[2]["event_id"], out[2]["amount"], out[2]["_reason"]) == ("e2", "1.50", None)
    assert (out[3]["amount"], out[3]["note"], out[3]["_reason"]) == ("1.5", 'x: 1, y"2 [3]', None)
    assert (out[4]["n"], json.loads(out[4]["_rescued_data"])) == ('{"h":1.5}', {"ts": "2026-01-01T10:20:30Z"})


def _number_text(rng: random.Random) -> str:
    sign = rng.choice(["", "", "-"])
    whole = rng.choice(["0", str(rng.randrange(1, 10**rng.randrange(1, 25)))])
    fraction = rng.choice(["", "", "." + "".join(rng.choices("0123456789", k=rng.randrange(1, 22)))])
    exponent = rng.choice(["", "", "", rng.choice("eE") + rng.choice("+-") + str(rng.randrange(0, 400))])
    return sign + whole + fraction + exponent


def _random_line(rng: random.Random, plain_strings: bool) -> tuple[str, dict[str, object]]:
    """A JSON object line, and per top-level key what bronze must keep: the text, or a parsed container."""
    texts = ["usr_1", "12.50", "2026-01-01T10:20:30Z", 'quote " and \\ slash', "é ü", "{1.5}"]
    if not plain_strings:
        texts += ["a: 1, b", "x [2]", ",3}", '": 4, "k": 5']
    parts, expected = [], {}
    for i in range(rng.randrange(1, 8)):
        key, space = f"k{i}", rng.choice(["", " ", "  "])
        kind = rng.randrange(6)
        if kind < 3:
            text = _number_text(rng)
            raw, expected[key] = text, text
        elif kind == 3:
            value = rng.choice(texts)
            raw, expected[key] = json.dumps(value), value
        elif kind == 4:
            nested = {"a": [rng.choice([1.5, 2, -0.25, 10.0]), "b"]}
            raw, expected[key] = json.dumps(nested), nested
        else:
            raw = rng.choice(["true", "false", "null"])
            expected[key] = None if raw == "null" else raw
        parts.append(f'"{key}"{space}:{space}{raw}')
    return "{" + rng.choice([",", ", "]).join(parts) + "}", expected


@pytest.mark.parametrize("plain_strings", [True, False])
def test_each_number_is_kept_as_written_on_random_lines(spark: SparkSession, plain_strings: bool) -> None:
    rng = random.Random(20261202 + plain_strings)
    cases = [_random_line(rng, plain_strings) for _ in range(400)]
    df = spark.createDataFrame([(line, n) for n, (line, _) in enumerate(cases)], "value string, _line_no int")
    out = {r["_line_no"]: r for r in parse_lines(df, []).collect()}
    for n, (line, expected) in enumerate(cases):
        assert out[n]["_reason"] is None, line
        got = json.loads(out[n]["_rescued_data"])
        assert got.keys() == expected.keys(), line
        for key, want in expected.items():
            if isinstance(want, dict):
                assert json.loads(got[key]) == want, line  # Spark's compact text of the same value
            elif plain_strings or want is None or got[key] == want:
                assert got[key] == want, line
            else:
                # A string holding text like a number value: the line keeps Spark's text.
                assert float(got[key].strip('"')) == float(want), line


def test_a_source_without_a_file_on_a_day_others_sent_one_for_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def sent(source: str, day: int) -> bronze.LandingFile:
        arrival = date(2026, 1, day)
        path = f"{source}/{arrival}.jsonl"
        return bronze.LandingFile(source, arrival, Path(path), path, 1, "0" * 64, 1, 0)

    files = {
        "order_placed": [sent("order_placed", day) for day in range(1, 9)],
        "users": [sent("users", 1)],
        "rating_submitted": [sent("rating_submitted", day) for day in (1, 3)],
        "delivery_completed": [],
    }
    with caplog.at_level("WARNING", logger="lakeward.bronze"):
        bronze._warn_of_missing_files(files)
    assert [r.getMessage() for r in caplog.records] == [
        "bronze users: no landing file for 7 arrival day(s) the other sources sent files for "
        "(2026-01-02, 2026-01-03, 2026-01-04, 2026-01-05, 2026-01-06, ...)",
        "bronze rating_submitted: no landing file for 6 arrival day(s) the other sources sent files for "
        "(2026-01-02, 2026-01-04, 2026-01-05, 2026-01-06, 2026-01-07, ...)",
        "bronze delivery_completed: no landing file for 8 arrival day(s) the other sources sent files for "
        "(2026-01-01, 2026-01-02, 2026-01-03, 2026-01-04, 2026-01-05, ...)",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="lakeward.bronze"):
        bronze._warn_of_missing_files({source: [sent(source, 1)] for source in ("users", "order_placed")})
        bronze._warn_of_missing_files({"users": [], "order_placed": []})
    assert caplog.records == []


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"a": 1}',
        b'\xef\xbb\xbf{"a": 1}\n\n{"b": "\xff\xfe"}\r\n\xef\xbb\xbf{"c": 3}\n',
        b"\xef\xbb\xbf",
        b"\n\n\n",
        b"\r\n" + b"x" * 3000 + b"\n" + b'{"\xc3\xa9t\xc3\xa9": "\xe2\x80\x8b"}',
    ],
    ids=["empty", "no-newline", "bom-blank-bad-utf8-cr", "bom-only", "blank-lines", "long-and-accents"],
)
def test_the_lines_hashed_are_the_lines_spark_reads(
    spark: SparkSession, base_settings: Settings, tmp_path: Path, content: bytes
) -> None:
    """Python's count and CRC sum of a file's lines equal what Spark's reader gives, byte for byte."""
    settings = base_settings.model_copy(update={"data_root": tmp_path})
    path = tmp_path / "landing" / "order_placed" / "2026-03-01.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    landing = bronze._describe_file(settings, "order_placed", date(2026, 3, 1), path)
    sizes = split_sizes(bronze._read_files(spark, [landing], datetime.now(UTC))).collect()
    read = (sum(r["_n"] for r in sizes), sum(r["_crc_sum"] for r in sizes))
    assert read == (landing.lines, landing.line_crc_sum)
    assert landing.size_bytes == len(content)
