import json

from chispa import assert_df_equality
from pyspark.sql import SparkSession

from lakeward.bronze import BLANK, DUPLICATE_KEY, MALFORMED, NOT_AN_OBJECT, number_lines, parse_lines


def test_number_lines_across_files_and_splits(spark: SparkSession) -> None:
    # Two files; file a was read as two splits whose ids are not contiguous.
    rows = [
        ("a0", "a", 0, 100), ("a1", "a", 0, 101),
        ("a2", "a", 64, 8589934592), ("a3", "a", 64, 8589934593), ("a4", "a", 64, 8589934594),
        ("b0", "b", 0, 17179869184),
    ]
    lines = spark.createDataFrame(rows, "value string, _file string, _block long, _mid long")
    got = {r["value"]: r["_line_no"] for r in number_lines(lines).collect()}
    assert got == {"a0": 1, "a1": 2, "a2": 3, "a3": 4, "a4": 5, "b0": 1}


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


def test_a_line_that_names_a_key_twice_is_refused(spark: SparkSession) -> None:
    twice = ['{"event_id": "e1", "event_id": "e2"}', '{"a": 1, "event_id": "e1", "a": 2}',
             '{"a": {"b": 1}, "a": {"b": 1}}', '{"event_id" : "e1","event_id":null}']
    once = ['{"event_id": "e1", "n": {"event_id": "e2"}}', '{"event_id": "e1", "t": "\\":\\":"}',
            '{"event_id": "e1", "l": [{"a": 1}, {"a": 2}]}', '{"event_id": "e1"}']
    df = spark.createDataFrame([(v, i) for i, v in enumerate(twice + once)], "value string, _line_no long")
    out = {r["_line_no"]: r["_reason"] for r in parse_lines(df, ["event_id"]).collect()}
    assert [out[i] for i in range(len(twice))] == [DUPLICATE_KEY] * len(twice)
    assert [out[len(twice) + i] for i in range(len(once))] == [None] * len(once)


def test_parse_lines_keeps_its_input_and_adds_the_documented_columns(spark: SparkSession) -> None:
    df = spark.createDataFrame([('{"a": "1", "b": 2}', 1), ("{", 2)], "value string, _line_no long")
    out = parse_lines(df, ["a"])
    assert out.columns == ["value", "_line_no", "a", "_rescued_data", "_reason"]
    assert_df_equality(out.select("value", "_line_no"), df, ignore_row_order=True)
