"""Data contracts (``conf/contracts/*.yml``) run as Great Expectations suites.

A contract names a logical table and lists expectations by their Great
Expectations name with keyword arguments::

    table: silver_orders
    expectations:
      - expect_column_values_to_not_be_null: {column: event_id}
      - expect_column_values_to_be_between: {column: amount, min_value: 0}

:func:`check` validates a DataFrame before it is written, :func:`record`
writes one row per expectation to ``ops.quality_results``, and
:meth:`GateResult.raise_if_failed` raises :class:`GateFailed` when any
expectation failed::

    gate = check(settings, "silver_orders", df, batch="order_placed:2026-03-01")
    record(spark, settings, [gate])
    gate.raise_if_failed()

Results hold counts only: Great Expectations is asked for no unexpected
values, and only numeric fields are kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from lakeward import interrupt, tables
from lakeward.config import ConfigError, Settings, read_yaml

log = logging.getLogger(__name__)

RESULT_SCHEMA = T.StructType(
    [
        T.StructField("checked_at", T.TimestampType()),
        T.StructField("batch", T.StringType()),
        T.StructField("suite", T.StringType()),
        T.StructField("table_name", T.StringType()),
        T.StructField("expectation", T.StringType()),
        T.StructField("kwargs", T.StringType()),
        T.StructField("success", T.BooleanType()),
        T.StructField("element_count", T.LongType()),
        T.StructField("unexpected_count", T.LongType()),
        T.StructField("unexpected_percent", T.DoubleType()),
        T.StructField("gate_passed", T.BooleanType()),
    ]
)

# Nothing that could carry a row's value leaves Great Expectations. BASIC has every count
# kept here; SUMMARY would also plan an index list and an index query per expectation,
# about 13% of a small validation's time, for lists that are empty anyway.
_RESULT_FORMAT = {
    "result_format": "BASIC",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
}


class GateFailed(RuntimeError):
    """One or more contracts failed; nothing was written to their tables."""

    def __init__(self, failures: Mapping[str, Sequence[str]]) -> None:
        super().__init__("; ".join(
            f"quality gate {suite} failed: {', '.join(failed)}" for suite, failed in failures.items()
        ))
        self.failures = {suite: list(failed) for suite, failed in failures.items()}

    @classmethod
    def joined(cls, errors: Sequence[GateFailed]) -> GateFailed:
        """One error naming every failure of ``errors``, so no failed gate goes unreported."""
        return cls({suite: failed for error in errors for suite, failed in error.failures.items()})


@dataclass(frozen=True)
class Contract:
    """One table's expectations."""

    suite: str
    table: str
    expectations: tuple[tuple[str, dict[str, Any]], ...]
    file: str = ""
    """Where the contract was read from, for messages."""

    @property
    def origin(self) -> str:
        """The contract's file, or its suite when it was not read from one."""
        return self.file or self.suite


def result_spec(settings: Settings) -> tables.TableSpec:
    """``ops.quality_results``: one row per expectation per gate run."""
    return tables.TableSpec(name=settings.table("ops_quality_results"), schema=RESULT_SCHEMA)


def load_contracts(directory: Path, *, build: bool = True) -> dict[str, Contract]:
    """Contracts by logical table name.

    A missing directory, a malformed file or two contracts for one table raise
    :class:`ConfigError`; so do expectations Great Expectations cannot build,
    unless ``build`` is false (which spares the seconds its import takes).
    """
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no contracts directory (quality.contracts_dir)")
    contracts: dict[str, Contract] = {}
    for path in sorted(directory.glob("*.yml")):
        contract = _parse_contract(path)
        if contract.table in contracts:
            first = contracts[contract.table].file
            raise ConfigError(f"{path}: a second contract for {contract.table} (the first is {first})")
        contracts[contract.table] = contract
    if build:
        for contract in contracts.values():
            _expectations(contract.expectations, contract.origin)
    return contracts


def _parse_contract(path: Path) -> Contract:
    data = read_yaml(path)
    extra = sorted(str(key) for key in set(data) - {"table", "expectations"})
    if extra:
        raise ConfigError(f"{path}: {', '.join(extra)}: unknown key; expected 'table' and 'expectations'")
    table = data.get("table")
    items = data.get("expectations")
    if not isinstance(table, str) or not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: 'table' must be a name and 'expectations' a non-empty list")
    expectations = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"{path}: expectations[{index}]: expected one 'name: {{kwargs}}' entry")
        ((name, kwargs),) = item.items()
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{path}: expectations[{index}] {name}: kwargs must be a mapping")
        expectations.append((str(name), kwargs))
    return Contract(suite=path.stem, table=table, expectations=tuple(expectations), file=str(path))


# The arguments through which an expectation names the columns it reads.
_COLUMN_ARGUMENTS = ("column", "column_A", "column_B", "column_list", "column_set")


def check_columns(contract: Contract, table: str, columns: Sequence[str]) -> None:
    """:class:`ConfigError` for an expectation on a column the gated rows of ``table`` do not have.

    Great Expectations would raise on it only while the gate runs, part way
    through silver.
    """
    for index, (kind, kwargs) in enumerate(contract.expectations):
        for argument in _COLUMN_ARGUMENTS:
            value = kwargs.get(argument)
            named = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            unknown = [str(name) for name in named if name not in columns]
            if unknown:
                raise ConfigError(
                    f"{contract.origin}: expectations[{index}] {kind}: {argument}: no column "
                    f"{', '.join(unknown)} in {table}; its columns are {', '.join(columns)}"
                )


def _expectations(entries: Sequence[tuple[str, dict[str, Any]]], where: Path | str) -> list[Any]:
    """The contract's expectations, each carrying its position in the contract.

    An unknown expectation, arguments Great Expectations refuses, or an entry
    a suite would keep only once (same kind and arguments as an earlier one),
    are a :class:`ConfigError` naming ``where``.
    """
    built: list[Any] = []
    for index, (kind, kwargs) in enumerate(entries):
        entry = f"{where}: expectations[{index}] {kind}"
        cls = _expectation_class(kind, entry)
        try:
            expectation = cls(**kwargs)
        except ValueError as error:  # pydantic's ValidationError
            raise ConfigError(f"{entry}: {' '.join(str(error).split())}") from None
        # Great Expectations returns results in an order of its own (by column,
        # then kind), not the suite's: each carries its position in the contract.
        expectation.meta = {**(expectation.meta or {}), _POSITION: index}
        if any(_same_rule(expectation, earlier) for earlier in built):
            raise ConfigError(f"{entry}: repeats an earlier entry, and a suite would run it once")
        built.append(expectation)
    return built


def _same_rule(a: Any, b: Any) -> bool:
    # What ExpectationSuite.add_expectation compares before it drops a new entry.
    ignored = {"id", "rendered_content", "notes", "meta"}
    same_kind = a.expectation_type == b.expectation_type
    return bool(same_kind and a.dict(exclude=ignored) == b.dict(exclude=ignored))


def _expectation_class(name: str, entry: str) -> Any:
    gx = _gx()
    class_name = "".join(part.capitalize() for part in name.split("_"))
    cls = getattr(gx.expectations, class_name, None)
    if not re.fullmatch(r"expect_[a-z_]+", name) or cls is None:
        raise ConfigError(f"{entry}: unknown expectation")
    return cls


def preload() -> None:
    """Start importing Great Expectations in a background thread.

    The import takes several seconds of Python work; a job that will validate
    later starts it first, so it overlaps with Spark work the JVM is doing.
    Not a daemon: interrupting an import at interpreter exit can crash it.
    """
    threading.Thread(target=_preload, name="preload-great-expectations").start()


def _preload() -> None:
    interrupt.leave_signals_to_main()
    _gx()


@lru_cache(maxsize=1)
def _gx() -> Any:
    # Imported on first use: it takes seconds and most commands never validate.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    # This one sets its own level (INFO) and would log a temporary directory per validation.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    return gx


def validate(df: DataFrame, contract: Contract) -> list[dict[str, Any]]:
    """Run the contract on ``df``; one dict per expectation, counts only.

    Safe to call from several threads at once: each call has a data context of
    its own, and Great Expectations (1.24) builds a batch's validator through
    the context that owns its data source, not through the process's current
    one, so concurrent validations do not see each other's data.
    """
    gx = _gx()
    context = gx.get_context(mode="ephemeral")
    # Progress bars would interleave with the job's log lines.
    context.variables.progress_bars = _progress_bars_off()
    # persist=False: Great Expectations would otherwise cache the frame and never
    # release it, one cache entry per validation for the life of the process;
    # callers hand in a frame that is cached already when that pays.
    asset = context.data_sources.add_spark(name="lakeward", persist=False).add_dataframe_asset(
        name=contract.suite
    )
    batch = asset.add_batch_definition_whole_dataframe("batch").get_batch(
        batch_parameters={"dataframe": df}
    )
    suite = gx.ExpectationSuite(name=contract.suite)
    for expectation in _expectations(contract.expectations, contract.origin):
        suite.add_expectation(expectation)
    outcome = batch.validate(suite, result_format=_RESULT_FORMAT)
    by_position = {(r.expectation_config.meta or {}).get(_POSITION): r for r in outcome.results}
    if len(outcome.results) != len(contract.expectations) or set(by_position) != set(
        range(len(contract.expectations))
    ):
        raise RuntimeError(
            f"quality: suite {contract.suite}: {len(outcome.results)} result(s) for "
            f"{len(contract.expectations)} expectation(s) could not be matched to the contract"
        )
    rows = []
    for index, (name, kwargs) in enumerate(contract.expectations):
        result = by_position[index]
        raised = _raised(result.exception_info)
        if raised:
            # Not a verdict on the rows: the gate cannot say whether they pass.
            raise ContractError(
                f"{contract.origin}: expectations[{index}] {name}: Great Expectations could not "
                f"evaluate it: {raised}"
            )
        details = result.result or {}
        rows.append(
            {
                "expectation": name,
                "kwargs": json.dumps(kwargs, sort_keys=True, default=str),
                "success": bool(result.success),
                "element_count": _int(details.get("element_count")),
                "unexpected_count": _int(details.get("unexpected_count")),
                "unexpected_percent": _float(details.get("unexpected_percent")),
            }
        )
    return rows


_POSITION = "lakeward_position"


class ContractError(RuntimeError):
    """An expectation Great Expectations raised on instead of evaluating."""


# From the first quote on: Spark quotes the value it could not handle, and a value
# may hold quotes or a line break itself.
_QUOTED = re.compile(r"['\"].*")
# Py4J's first line only names the JVM call; the Java error is on the next, and a
# failed task's own error comes after the job's "Lost task ... (TID n) (host ...): ".
_PY4J_CALL = re.compile(r"An error occurred while calling \S+$")
_LOST_TASK = re.compile(r"^(?:\S+: )?Job aborted due to stage failure: .*?\(TID \d+\) \(.*?\): ")


def _raised(info: Any) -> str | None:
    """The error in a result's ``exception_info``, without quoted values; None when nothing was raised.

    It is one ``{raised_exception, exception_message, ...}``, or one such per
    metric the expectation computed. Only the first line is kept (of a JVM
    error, the Java error's, not Py4J's), up to its first quote: a Spark error
    quotes the row value it failed on.
    """
    if not isinstance(info, dict):
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception"):
            lines = str(entry.get("exception_message") or "").strip().splitlines()
            if len(lines) > 1 and _PY4J_CALL.match(lines[0]):
                java = _LOST_TASK.sub("", lines[1].removeprefix(":").strip())
                lines = [java] if java else lines
            return _QUOTED.sub("'…'", lines[0])[:300] if lines else "an error"
    return None


def _progress_bars_off() -> Any:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    return ProgressBarsConfig(globally=False, metric_calculations=False)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class GateResult:
    """One contract run on one batch: the rows for ``ops.quality_results`` and what failed."""

    suite: str
    records: list[tuple[Any, ...]]
    failed: list[str]

    def raise_if_failed(self) -> None:
        """Raise :class:`GateFailed` naming the failed expectations, if any."""
        if self.failed:
            raise GateFailed({self.suite: self.failed})


def require_contracts(
    settings: Settings, tables: Sequence[str], contracts: Mapping[str, Contract] | None = None
) -> dict[str, Contract]:
    """The contracts of these logical tables; :class:`ConfigError` naming each that has none.

    They are taken from ``contracts``, or else read from the contracts directory.
    Silver calls it before it writes anything, so a missing or broken contract stops it whole.
    """
    contracts = load_contracts(settings.contracts_dir) if contracts is None else contracts
    missing = sorted(set(tables) - set(contracts))
    if missing:
        raise ConfigError(
            f"{settings.contracts_dir}: no contract for {', '.join(missing)}, which silver writes only "
            f"behind a gate (contracts found for: {', '.join(sorted(contracts)) or 'none'})"
        )
    return {table: contracts[table] for table in tables}


def check(
    settings: Settings, table: str, df: DataFrame, *, batch: str, contract: Contract | None = None
) -> GateResult:
    """Validate ``df`` against the contract of logical ``table``.

    Every gated table needs a contract: without one, :class:`ConfigError`, since
    writing ungated rows would pass off unchecked data as checked. A caller
    holding the contract from :func:`require_contracts` passes it, so the
    contracts directory is read once per run.

    Records nothing: :func:`record` writes the results, so a job that gates
    several tables writes them in one commit.
    """
    if contract is None:
        contract = require_contracts(settings, [table])[table]
    results = validate(df, contract)
    failed = [f"{r['expectation']}({r['kwargs']})" for r in results if not r["success"]]
    passed = not failed
    at = tables.utc_now()
    records = [
        (
            at, batch, contract.suite, settings.table(table), r["expectation"], r["kwargs"],
            r["success"], r["element_count"], r["unexpected_count"], r["unexpected_percent"], passed,
        )
        for r in results
    ]
    if passed:
        log.info("quality: %s passed %d expectation(s) for %s", contract.suite, len(results), batch)
    else:
        log.error("quality: %s failed %d of %d expectation(s) for %s: %s",
                  contract.suite, len(failed), len(results), batch, ", ".join(failed))
    return GateResult(contract.suite, records, failed)


def record(spark: SparkSession, settings: Settings, results: list[GateResult]) -> None:
    """Append the results of some gate runs to ``ops.quality_results``, in one commit."""
    records = [row for result in results for row in result.records]
    if not records:
        return
    spec = result_spec(settings)
    tables.ensure_table(spark, spec)
    tables.append(spark.createDataFrame(records, RESULT_SCHEMA), spec.name)
