"""Contracts as Great Expectations suites: counts per expectation, no values, concurrent runs."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from pyspark import StorageLevel
from pyspark.sql import SparkSession

from lakeward import quality, silver
from lakeward.config import ConfigError, Settings

CONTRACT = quality.Contract(
    suite="probe",
    table="probe",
    expectations=(
        ("expect_column_values_to_not_be_null", {"column": "key"}),
        ("expect_column_values_to_be_between", {"column": "amount", "min_value": 0, "max_value": 100}),
    ),
)


def _rows(n: int, nulls: int, negative: int) -> list[tuple[str | None, float]]:
    """``n`` rows: the first ``nulls`` without a key, the last ``negative`` with a negative amount."""
    return [
        (None if i < nulls else f"secret-{i}", -7.5 if i >= n - negative else float(i % 50))
        for i in range(n)
    ]


def _counts(results: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(r["success"], r["element_count"], r["unexpected_count"]) for r in results]


def test_validations_on_threads_each_count_their_own_rows(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each validation is built through its own data context, never the process's current one."""
    from great_expectations.data_context.data_context.context_factory import project_manager

    def through_the_current_context(*args: object, **kwargs: object) -> None:
        raise AssertionError("a validator was built through the process's current data context")

    monkeypatch.setattr(project_manager, "get_validator", through_the_current_context)
    shapes = [(40, 0, 0), (55, 3, 0), (70, 0, 5), (85, 2, 9), (31, 31, 1), (64, 1, 1)]
    frames = [spark.createDataFrame(_rows(*shape), "key string, amount double") for shape in shapes]
    for frame in frames:
        frame.cache().count()
    # A suite (and data asset) name per thread: a validator that found another
    # thread's context would not find its asset there.
    contracts = [replace(CONTRACT, suite=f"probe_{i}") for i in range(len(frames))]
    together = threading.Barrier(len(frames))

    def validate(i: int) -> list[dict[str, object]]:
        together.wait(timeout=60)
        return quality.validate(frames[i], contracts[i])

    with ThreadPoolExecutor(max_workers=len(frames)) as pool:
        results = list(pool.map(validate, range(len(frames))))

    for frame in frames:
        frame.unpersist()
    expected = [
        [(nulls == 0, n, nulls), (negative == 0, n, negative)] for n, nulls, negative in shapes
    ]
    assert [_counts(r) for r in results] == expected


def test_a_validation_leaves_nothing_cached(spark: SparkSession) -> None:
    """Great Expectations caches what it validates unless told not to, and never releases it."""
    df = spark.createDataFrame(_rows(20, 1, 2), "key string, amount double")

    results = quality.validate(df, CONTRACT)

    assert _counts(results) == [(False, 20, 1), (False, 20, 2)]
    assert df.storageLevel == StorageLevel.NONE


def test_a_failed_gate_records_counts_and_no_value(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "probe.yml").write_text(
        "table: silver_orders\n"
        "expectations:\n"
        "  - expect_column_values_to_not_be_null: {column: key}\n"
        "  - expect_column_values_to_be_in_set: {column: key, value_set: [secret-1]}\n"
    )
    settings = base_settings.model_copy(
        update={"quality": base_settings.quality.model_copy(update={"contracts_dir": str(tmp_path)})}
    )
    df = spark.createDataFrame(_rows(6, 1, 0), "key string, amount double")

    gate = quality.check(settings, "silver_orders", df, batch="b1")

    assert gate is not None
    assert gate.failed == ['expect_column_values_to_not_be_null({"column": "key"})',
                           'expect_column_values_to_be_in_set({"column": "key", "value_set": ["secret-1"]})']
    assert [(r[2], r[3], r[6], r[7], r[8]) for r in gate.records] == [
        ("probe", settings.table("silver_orders"), False, 6, 1),
        ("probe", settings.table("silver_orders"), False, 6, 4),
    ]
    # The contract's own arguments aside, no value of the data is kept.
    values = " ".join(map(str, gate.records)).replace('"secret-1"', "")
    assert "secret-" not in values
    with pytest.raises(quality.GateFailed, match="expect_column_values_to_be_in_set"):
        gate.raise_if_failed()


def test_each_result_is_the_expectation_it_names(spark: SparkSession) -> None:
    """Great Expectations orders its results by column and kind, not as the suite lists them."""
    frame = spark.createDataFrame(
        [(f"k{i}", float(i * 10), i % 6 + 1) for i in range(10)], "user_key string, amount double, items int"
    )
    expectations = (
        ("expect_column_values_to_be_between", {"column": "amount", "min_value": 0, "max_value": 50}),
        ("expect_column_values_to_be_between", {"column": "items", "min_value": 1, "max_value": 100}),
        ("expect_column_values_to_match_regex", {"column": "user_key", "regex": "^zzz"}),
        ("expect_column_values_to_not_be_null", {"column": "amount", "meta": {"note": "kept"}}),
        ("expect_column_values_to_be_between", {"column": "amount", "min_value": 0, "max_value": 40}),
        # More than ten: positions compared as numbers, not as text.
        *[("expect_column_values_to_be_between", {"column": "items", "min_value": low, "max_value": 6})
          for low in range(1, 7)],
    )
    contract = replace(CONTRACT, expectations=expectations)
    results = quality.validate(frame, contract)
    assert [(r["expectation"], r["kwargs"]) for r in results] == [
        (name, json.dumps(kwargs, sort_keys=True)) for name, kwargs in expectations
    ]
    assert [(r["success"], r["unexpected_count"]) for r in results] == [
        (False, 4), (True, 0), (False, 10), (True, 0), (False, 5),
        *[(low == 1, sum(i % 6 + 1 < low for i in range(10))) for low in range(1, 7)],
    ]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"column": "amount", "maxx": 5}, r"expectations\[1\] expect_column_values_to_be_between: .*maxx"),
    ({"column": "amount", "max_value": 100.0}, r"expectations\[1\] .*repeats an earlier entry"),
])
def test_a_contract_great_expectations_cannot_run_as_written_is_refused(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    (tmp_path / "bad.yml").write_text(json.dumps({"table": "probe", "expectations": [
        {"expect_column_values_to_be_between": {"column": "amount", "max_value": 100}},
        {"expect_column_values_to_be_between": kwargs},
    ]}))
    with pytest.raises(ConfigError, match=r"bad\.yml: " + message):
        quality.load_contracts(tmp_path)


def test_a_contract_naming_an_unknown_expectation_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text("table: t\nexpectations:\n  - expect_the_moon: {column: a}\n")

    unknown = r"bad\.yml: expectations\[0\] expect_the_moon: unknown expectation$"
    with pytest.raises(ConfigError, match=unknown):
        quality.load_contracts(tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("table: t\nexpectations: [{expect_column_values_to_not_be_null: {column: a}\n",
     r"bad\.yml: not valid YAML: .*\(line \d+, column \d+\)$"),
    ("table: t\nseverity: warning\nexpectations:\n  - expect_column_values_to_not_be_null: {column: a}\n",
     r"bad\.yml: severity: unknown key; expected 'table' and 'expectations'$"),
    ("table: t\ntable: u\nexpectations:\n  - expect_column_values_to_not_be_null: {column: a}\n",
     r"bad\.yml: not valid YAML: key 'table' given twice in one mapping \(line 2, column 1\)$"),
])
def test_a_contract_file_that_does_not_read_names_the_file_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "bad.yml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        quality.load_contracts(tmp_path, build=False)
    (tmp_path / "bad.yml").write_bytes(b"table: t\xff\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: not UTF-8 text"):
        quality.load_contracts(tmp_path, build=False)


def test_an_expectation_on_a_column_the_table_lacks_is_a_config_error(
    base_settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "orders.yml").write_text(
        "table: silver_orders\nexpectations:\n  - expect_column_values_to_not_be_null: {column: amount}\n"
        "  - expect_column_pair_values_a_to_be_greater_than_b: {column_A: amount, column_B: amout}\n"
    )
    settings = base_settings.model_copy(
        update={"quality": base_settings.quality.model_copy(update={"contracts_dir": str(tmp_path)})}
    )
    contract = quality.require_contracts(settings, ["silver_orders"])["silver_orders"]
    with pytest.raises(ConfigError, match=(
        r"orders\.yml: expectations\[1\] expect_column_pair_values_a_to_be_greater_than_b: column_B: "
        r"no column amout in silver\.orders; its columns are event_id, amount$"
    )):
        quality.check_columns(contract, "silver.orders", ["event_id", "amount"])
    quality.check_columns(contract, "silver.orders", ["amount", "amout"])


def test_a_contract_for_a_table_silver_does_not_gate_is_refused(
    base_settings: Settings, tmp_path: Path
) -> None:
    for path in base_settings.contracts_dir.glob("*.yml"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "typo.yml").write_text(
        "table: silver_orderz\nexpectations:\n  - expect_column_values_to_not_be_null: {column: amount}\n"
    )
    settings = base_settings.model_copy(
        update={"quality": base_settings.quality.model_copy(update={"contracts_dir": str(tmp_path)})}
    )
    refused = (r"typo\.yml: table: 'silver_orderz' is not a table silver writes behind a gate; "
               r"expected one of silver_orders, silver_deliveries, silver_ratings, silver_users$")
    with pytest.raises(ConfigError, match=refused):
        silver.check_contracts(settings)  # the CLI's check, before Spark starts
    with pytest.raises(ConfigError, match=refused):
        silver.require_contracts(settings, ["order_placed"])  # silver's, before it writes
    (tmp_path / "typo.yml").unlink()
    silver.check_contracts(settings)
    assert list(silver.require_contracts(settings, ["order_placed"])) == ["silver_orders"]


def test_an_expectation_great_expectations_cannot_evaluate_is_not_a_failed_gate(spark: SparkSession) -> None:
    df = spark.createDataFrame(_rows(3, 0, 0), "key string, amount double")
    contract = replace(CONTRACT, expectations=(("expect_column_values_to_not_be_null", {"column": "nope"}),))
    with pytest.raises(quality.ContractError, match=(
        r"^probe: expectations\[0\] expect_column_values_to_not_be_null: Great Expectations could not "
        r"evaluate it: "
    )) as raised:
        quality.validate(df, contract)
    assert "\n" not in str(raised.value) and "secret" not in str(raised.value)


def test_a_jvm_error_is_reported_as_the_java_error_of_the_failed_task(spark: SparkSession) -> None:
    df = spark.createDataFrame([("abc", 1.0), ("secret", 2.0)], "key string, amount double")
    broken = ("expect_column_values_to_match_regex", {"column": "key", "regex": "^[0-9a-f"})
    with pytest.raises(quality.ContractError) as raised:
        quality.validate(df, replace(CONTRACT, expectations=(broken,)))
    assert str(raised.value) == (
        "probe: expectations[0] expect_column_values_to_match_regex: Great Expectations could not "
        "evaluate it: java.util.regex.PatternSyntaxException: Unclosed character class near index 7"
    )


def test_a_table_without_a_contract_is_not_written_ungated(
    spark: SparkSession, base_settings: Settings, tmp_path: Path
) -> None:
    contract = "table: silver_orders\nexpectations:\n  - expect_column_values_to_not_be_null: {column: key}\n"
    (tmp_path / "orders.yml").write_text(contract)
    settings = base_settings.model_copy(
        update={"quality": base_settings.quality.model_copy(update={"contracts_dir": str(tmp_path)})}
    )
    df = spark.createDataFrame(_rows(2, 0, 0), "key string, amount double")
    missing = r"no contract for silver_ratings, silver_users, which silver writes only behind a gate"
    with pytest.raises(ConfigError, match=missing):
        quality.require_contracts(settings, ["silver_orders", "silver_users", "silver_ratings"])
    with pytest.raises(ConfigError, match=r"no contract for silver_ratings"):
        quality.check(settings, "silver_ratings", df, batch="b1")
    (tmp_path / "orders_again.yml").write_text(contract)
    with pytest.raises(ConfigError, match=r"orders_again\.yml: a second contract for silver_orders"):
        quality.load_contracts(tmp_path)
    with pytest.raises(ConfigError, match=r"nowhere: no contracts directory"):
        quality.load_contracts(tmp_path / "nowhere")


def test_an_error_great_expectations_reports_loses_the_values_it_quotes() -> None:
    message = "[CAST_INVALID_INPUT] The value 'Jane Doe' of the type \"STRING\" cannot be cast\nat ..."
    per_metric = {"metric-1": {"raised_exception": False}, "metric-2": {
        "raised_exception": True, "exception_message": message}}
    assert quality._raised(per_metric) == "[CAST_INVALID_INPUT] The value '…'"
    for value in ("O'Brien", "didn't arrive", "Jane\nDoe"):
        said = {"raised_exception": True, "exception_message": f"The value '{value}' of the type"}
        assert quality._raised(said) == "The value '…'"
    assert quality._raised({"raised_exception": False, "exception_message": None}) is None
