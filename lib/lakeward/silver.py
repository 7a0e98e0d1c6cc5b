"""Silver: typed, conformed, validated, pseudonymized and deduplicated events.

Per source, a run takes the bronze rows of some arrival dates and
1. conforms drift (``total_amount`` was ``amount`` on some days; ``tip_amount``
   arrives in ``_rescued_data``) and casts text to types (:func:`conform`);
2. sends rows with a null key, a value of the wrong type or out of range, a
   timestamp in the future or an arrival beyond the allowed lateness to
   ``silver.quarantine`` with the reason (:func:`validate`);
3. replaces ``user_id`` with ``user_key`` = HMAC-SHA256(key, user_id), and
   ``courier_id`` with ``courier_key`` likewise (:data:`PSEUDONYMS`);
4. keeps the first arrival of each ``event_id`` (:func:`dedupe`) and drops
   events silver already has;
5. runs the table's data contract, and writes only if it passes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import reduce

from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import bronze, interrupt, quality, tables
from lakeward.config import ConfigError, PipelineSettings, Settings
from lakeward.privacy.keys import fingerprint, withdraw_generated_key
from lakeward.privacy.pseudonymize import hmac_sha256
from lakeward.sources.bitebridge import DRIFT_NEW_FIELD, DRIFT_RENAMED_FIELD

log = logging.getLogger(__name__)

MONEY = T.DecimalType(12, 2)
# ISO 8601 instants with an offset: Z, +02, +0200 or +02:00, with up to nine
# fractional digits; Spark keeps microseconds, so digits past the sixth are cut,
# as Spark's CAST AS TIMESTAMP does. A time without an offset is refused: the
# instant it names depends on where it was written.
EVENT_TS_FORMATS = ("yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]X", "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]XXX")
_BEYOND_MICROSECONDS = r"(:\d{2}\.\d{6})\d{1,3}(?=[zZ+-])"


@dataclass(frozen=True)
class SilverSource:
    """How one bronze source becomes one silver table."""

    source: str
    table: str
    typed: dict[str, T.DataType]
    """Typed business columns (besides event_id, event_ts, user_key)."""
    ranges: dict[str, tuple[float | None, float | None]]
    """Inclusive bounds per column; None is unbounded."""
    required: tuple[str, ...] = ()
    """Typed columns a row cannot go without (a row lacking one is refused as ``missing:<name>``)."""


SOURCES: dict[str, SilverSource] = {
    "order_placed": SilverSource(
        "order_placed",
        "silver_orders",
        {
            "order_id": T.StringType(),
            "restaurant_id": T.StringType(),
            "city": T.StringType(),
            "amount": MONEY,
            "items": T.IntegerType(),
            "tip_amount": MONEY,
        },
        {"amount": (0, None), "items": (1, 100), "tip_amount": (0, None)},
        # An order's amount under an unknown name would pass as null and count no spend.
        required=("amount",),
    ),
    "delivery_completed": SilverSource(
        "delivery_completed",
        "silver_deliveries",
        {
            "order_id": T.StringType(),
            "courier_id": T.StringType(),
            "promised_minutes": T.IntegerType(),
            "actual_minutes": T.IntegerType(),
        },
        {"promised_minutes": (0, 1440), "actual_minutes": (0, 1440)},
        required=("promised_minutes", "actual_minutes"),
    ),
    "rating_submitted": SilverSource(
        "rating_submitted",
        "silver_ratings",
        {"order_id": T.StringType(), "rating": T.IntegerType()},
        {"rating": (1, 5)},
        required=("rating",),
    ),
    "users": SilverSource(
        "users",
        "silver_users",
        {"signup_date": T.DateType(), "city": T.StringType()},
        {},
        # The users contract requires it; a row without it would fail every gate of its day.
        required=("signup_date",),
    ),
}

PSEUDONYMS = {"user_id": "user_key", "courier_id": "courier_key"}
"""The raw identifiers of people silver replaces with their keyed hash, and the hash's column."""

LINEAGE = ("_arrival_date", "_ingested_at", "_source_file", "_line_no", "_batch_id")
NEW = "_new"
"""Marks a row the silver table lacks; the others are rows it holds from the row's own batch."""
HELD_ON = "_held_on"
"""Set on a copy that arrived before the row silver holds for its event: the held row's event
date (``silver.users``, which has none: the held row's arrival date)."""

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType()),
        T.StructField("event_id", T.StringType()),
        T.StructField("user_key", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("record", T.StringType()),
        T.StructField("_arrival_date", T.DateType()),
        T.StructField("_source_file", T.StringType()),
        T.StructField("_line_no", T.LongType()),
        T.StructField("_batch_id", T.StringType()),
        T.StructField("_quarantined_at", T.TimestampType()),
    ]
)

LEDGER_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType()),
        T.StructField("arrival_date", T.DateType()),
        T.StructField("batch_id", T.StringType()),
        T.StructField("rows_in", T.LongType()),
        T.StructField("rows_quarantined", T.LongType()),
        T.StructField("rows_duplicate", T.LongType()),
        T.StructField("rows_written", T.LongType()),
        T.StructField("processed_at", T.TimestampType()),
        # The pseudonymization key's fingerprint (privacy.keys.fingerprint): the
        # batch's user_keys are its HMACs, and the next run must use the same key.
        T.StructField("key_fingerprint", T.StringType()),
    ]
)


class KeyChangedError(ConfigError):
    """Silver holds rows pseudonymized with another key than this run's."""


@dataclass(frozen=True)
class SilverResult:
    """What one silver run recorded for one source: the counts of the batches new to its ledger."""

    source: str
    rows_in: int
    rows_quarantined: int
    rows_duplicate: int
    rows_written: int


def silver_spec(settings: Settings, source: str) -> tables.TableSpec:
    """The silver table of a source."""
    spec = SOURCES[source]
    if source == "users":
        fields = [
            T.StructField("user_key", T.StringType()),
            T.StructField("signup_date", T.DateType()),
            T.StructField("city", T.StringType()),
            T.StructField("updated_ts", T.TimestampType()),
            T.StructField("event_id", T.StringType()),
            T.StructField("_arrival_date", T.DateType()),
            T.StructField("_batch_id", T.StringType()),
        ]
    else:
        fields = [
            T.StructField("event_id", T.StringType()),
            T.StructField("event_ts", T.TimestampType()),
            T.StructField("event_date", T.DateType()),
            T.StructField("user_key", T.StringType()),
            *[T.StructField(PSEUDONYMS.get(name, name), dtype) for name, dtype in spec.typed.items()],
            T.StructField("_arrival_date", T.DateType()),
            T.StructField("_ingested_at", T.TimestampType()),
            T.StructField("_batch_id", T.StringType()),
        ]
    # Statistics only on what silver is filtered by: time, arrival, the person.
    stats = ("user_key", "_arrival_date") if source == "users" else (
        "event_ts", "event_date", "user_key", "_arrival_date"
    )
    return tables.TableSpec(
        name=settings.table(spec.table),
        schema=T.StructType(fields),
        subject_column="user_key",
        # Gold reads the event tables' feed. On silver.users nothing would: its MERGE's
        # old records would only pile up as copies in _change_data.
        change_data_feed=source != "users",
        stats_columns=stats,
    )


def quarantine_spec(settings: Settings) -> tables.TableSpec:
    """Rows silver refused, pseudonymized, with the reason."""
    return tables.TableSpec(
        name=settings.table("silver_quarantine"),
        schema=QUARANTINE_SCHEMA,
        subject_column="user_key",
    )


def ledger_spec(settings: Settings) -> tables.TableSpec:
    """``ops.silver_batches``: per bronze batch (one landing file), where every row went."""
    return tables.TableSpec(name=settings.table("ops_silver_batches"), schema=LEDGER_SCHEMA)


@dataclass(frozen=True)
class _Batch:
    """A bronze batch on a date silver processes."""

    arrival_date: date
    recorded: bool
    """Already in silver's ledger: its rows are read again, its counts not recorded again."""
    rows: int | None
    """The rows bronze's ledger records it wrote to the bronze table."""


@dataclass(frozen=True)
class Work:
    """What one silver run takes: per source, its arrival dates and bronze's batches on them."""

    dates: dict[str, list[date]]
    batches: dict[str, dict[str, _Batch]]
    """Per source, by batch id: every batch bronze recorded on the source's dates."""


def pending_work(spark: SparkSession, settings: Settings) -> Work:
    """Per source, the arrival dates of bronze batches silver has not recorded; one query.

    The batches come from bronze's ledger, not its tables, so a file with no
    readable line is processed too: its date then counts as passed. A file
    sent again with new content is a new batch, so its date is processed
    again. A date is processed whole, so its recorded batches come too.
    """
    # One row per landing file ever ingested: few enough to sort out here.
    rows = _batches(spark, settings).collect()
    pending = {(row["source"], row["arrival_date"]) for row in rows if not row["recorded"]}
    dates = {source: sorted(day for s, day in pending if s == source) for source in SOURCES}
    return Work(dates, _by_source([r for r in rows if (r["source"], r["arrival_date"]) in pending], dates))


def pending_dates(spark: SparkSession, settings: Settings) -> dict[str, list[date]]:
    """Per source, the arrival dates of bronze batches silver has not recorded."""
    return pending_work(spark, settings).dates


def work_on(spark: SparkSession, settings: Settings, dates: Mapping[str, Sequence[date]]) -> Work:
    """The given dates of each source, with bronze's batches on them (those without rows included)."""
    given = {source: sorted(days) for source, days in dates.items()}
    wanted = [(F.col("source") == s) & F.col("arrival_date").isin(days) for s, days in given.items() if days]
    rows = _batches(spark, settings).filter(reduce(Column.__or__, wanted)).collect() if wanted else []
    return Work(given, _by_source(rows, given))


def _by_source(rows: Sequence[Row], dates: Mapping[str, Sequence[date]]) -> dict[str, dict[str, _Batch]]:
    """Per source that has dates, the batches among ``rows`` (rows of :func:`_batches`) by id."""
    batches: dict[str, dict[str, _Batch]] = {source: {} for source, days in dates.items() if days}
    for row in rows:
        batches[row["source"]][row["batch_id"]] = _Batch(
            row["arrival_date"], row["recorded"], row["rows_written"]
        )
    return batches


def recorded_keys(spark: SparkSession, settings: Settings) -> dict[str, list[str]]:
    """Per key fingerprint in silver's ledger, the sources whose rows were written under that key.

    A batch that wrote no row left no ``user_key``: a source whose table was
    dropped to change the key may keep such rows in the ledger.
    """
    ledger = tables.read(spark, settings.table("ops_silver_batches"))
    if "key_fingerprint" not in ledger.columns:
        return {}
    rows = (
        ledger.filter((F.col("rows_written") > 0) & F.col("key_fingerprint").isNotNull())
        .groupBy("key_fingerprint").agg(F.collect_set("source").alias("sources"))
        .collect()
    )
    return {row["key_fingerprint"]: sorted(row["sources"]) for row in rows}


def refuse_other_key(recorded: Mapping[str, Sequence[str]], key: bytes) -> None:
    """:class:`KeyChangedError` when silver holds rows written with another key (see :func:`recorded_keys`).

    Each person's ``user_key`` is the HMAC of their id under the key, so a
    run with another key would give everyone a second one and split their
    history in silver, gold and every training set.
    """
    mark = fingerprint(key)
    others = {other: sources for other, sources in recorded.items() if other != mark}
    trimmed = key.strip()
    # A key set from a file often ends in its newline; a key file is read without it.
    hint = (
        ". This run's key starts or ends with whitespace (a newline from a file?), without which "
        "it is the key the rows were written with"
        if trimmed != key and fingerprint(trimmed) in others else ""
    )
    if others:
        written = "; ".join(
            f"{', '.join(sources)} under the key whose fingerprint is {other}"
            for other, sources in sorted(others.items())
        )
        raise KeyChangedError(
            f"silver holds rows pseudonymized with another key than this run's (fingerprint {mark}): "
            f"{written}. The same person would get a second user_key. Run with the key those rows were "
            "written with; to change the key, drop the silver tables, and their rows are pseudonymized "
            f"again from bronze with the new one{hint}"
        )


def _refuse_other_key_of_run(settings: Settings, recorded: Mapping[str, Sequence[str]], key: bytes) -> None:
    """:func:`refuse_other_key`, taking away the key file this run generated for a missing one."""
    try:
        refuse_other_key(recorded, key)
    except KeyChangedError as changed:
        generated = withdraw_generated_key(settings, key)
        if generated is None:
            raise
        raise KeyChangedError(
            f"{changed}. {generated} was missing, so this run generated a key there, now removed "
            "again: put back the key the rows were written with"
        ) from None


def _batches(spark: SparkSession, settings: Settings) -> DataFrame:
    """Bronze's batches of the silver sources; ``recorded``: whether silver's ledger has them.

    A ledger row written before rows named their batch (no ``batch_id``)
    covers the batches of its source and date ingested until it was written.
    """
    ingested = tables.read(spark, settings.table("ops_ingestion_batches")).select(
        "source", "arrival_date", "batch_id", "ingested_at", "rows_written"
    ).filter(F.col("source").isin(list(SOURCES)))
    ledger = tables.read(spark, settings.table("ops_silver_batches"))
    if "batch_id" not in ledger.columns:
        ledger = ledger.withColumn("batch_id", F.lit(None).cast("string"))
    by_id = ledger.filter(F.col("batch_id").isNotNull()).select(
        "source", "batch_id", F.lit(True).alias("_by_id")
    )
    # One such row per source and date (they were keyed so): an equi-join, no duplicates.
    legacy = ledger.filter(F.col("batch_id").isNull()).select(
        "source", "arrival_date", F.col("processed_at").alias("_legacy_at")
    )
    covered = F.coalesce(F.col("ingested_at") <= F.col("_legacy_at"), F.lit(False))
    return (
        ingested.join(by_id, ["source", "batch_id"], "left")
        .join(legacy, ["source", "arrival_date"], "left")
        .select(
            "source", "batch_id", "arrival_date",
            (F.col("_by_id").isNotNull() | covered).alias("recorded"), "rows_written",
        )
    )


def forget_lost(spark: SparkSession, settings: Settings) -> list[str]:
    """Sources whose silver table lost rows outside lakeward; the ledger rows of what it lost go.

    A silver table holding fewer rows than the ledger records as written was
    dropped and created again, truncated, restored to an older version, or had
    rows deleted. The test is the row count (Delta answers it from its log),
    not the version: a table put back from a copy starts again at version 0
    with every row. Bronze still holds those rows: with their ledger rows gone,
    those batches are pending again and the next silver run takes them from
    bronze, with the rows of theirs the table still holds. An empty table loses
    every ledger row of its source. An event table that is short is counted per
    batch, and the batches holding fewer rows than recorded lose theirs
    (``silver.users`` keeps one row per user, which no batch count adds up to:
    only its empty table is found). Ledger rows are removed, not marked, so the
    counts of a batch are never recorded twice.
    """
    names = {source: settings.table(spec.table) for source, spec in SOURCES.items()}
    counts = tables.row_counts(spark, list(names.values()))
    ledger = settings.table("ops_silver_batches")
    recorded = tables.read(spark, ledger)
    written = {
        row["source"]: row["written"] or 0
        for row in recorded.groupBy("source").agg(F.sum("rows_written").alias("written")).collect()
    }
    empty = sorted(source for source, name in names.items() if counts[name] == 0 and written.get(source))
    short = [
        source for source, name in names.items()
        if source != "users" and source not in empty and counts[name] < written.get(source, 0)
    ]
    if empty:
        log.warning(
            "silver: no rows in %s though %s records rows written (dropped and created "
            "again?); their bronze batches are taken again",
            ", ".join(names[source] for source in empty), ledger,
        )
    batches = _short_batches(spark, recorded, {source: names[source] for source in short}) if short else {}
    for source in short:
        if source not in batches:
            # Rows of ledger rows from before batch ids: which batch lost them cannot be told.
            log.info("silver: %s holds fewer rows than %s records, in no batch it can name",
                     names[source], ledger)
            continue
        log.warning(
            "silver: %s holds %d rows, %s records %d written (rows deleted or the table restored "
            "outside lakeward?): %d batch(es) short, taken again from bronze",
            names[source], counts[names[source]], ledger, written[source], len(batches[source]),
        )
    lost = [F.col("source").isin(empty)] if empty else []
    lost += [(F.col("source") == source) & F.col("batch_id").isin(ids) for source, ids in batches.items()]
    if lost:
        DeltaTable.forName(spark, ledger).delete(reduce(Column.__or__, lost))
    return sorted([*empty, *batches])


def _short_batches(
    spark: SparkSession, recorded: DataFrame, names: Mapping[str, str]
) -> dict[str, list[str]]:
    """Per source, the batch ids whose rows in its table (``names``) are fewer than ledger ``recorded`` says.

    Sources with no such batch are left out.
    """
    if "batch_id" not in recorded.columns:
        return {}  # a ledger from before batch ids: which batch is short cannot be told
    held = reduce(DataFrame.unionByName, [
        tables.read(spark, name).groupBy(F.lit(source).alias("source"), F.col("_batch_id").alias("batch_id"))
        .agg(F.count("*").alias("held"))
        for source, name in names.items()
    ])
    rows = (
        recorded.filter(
            F.col("source").isin(list(names)) & F.col("batch_id").isNotNull() & (F.col("rows_written") > 0)
        )
        .join(held, ["source", "batch_id"], "left")
        .filter(F.coalesce(F.col("held"), F.lit(0)) < F.col("rows_written"))
        .select("source", "batch_id").collect()
    )
    batches: dict[str, list[str]] = {}
    for row in rows:
        batches.setdefault(row["source"], []).append(row["batch_id"])
    return {source: sorted(ids) for source, ids in batches.items()}


def processed_days(spark: SparkSession, settings: Settings, source: str) -> list[date]:
    """The arrival dates the ledger records for ``source``, in order; none when there is no ledger."""
    name = settings.table("ops_silver_batches")
    if not tables.exists(spark, name):
        return []
    days = tables.read(spark, name).filter(F.col("source") == source).select("arrival_date").distinct()
    return sorted(row["arrival_date"] for row in days.collect())


def last_processed_day(spark: SparkSession, settings: Settings, sources: Sequence[str]) -> date | None:
    """The last arrival date the ledger records for any of ``sources``; None if none."""
    ledger = tables.read(spark, settings.table("ops_silver_batches"))
    latest = ledger.filter(F.col("source").isin(list(sources))).agg(F.max("arrival_date")).first()
    return latest[0] if latest is not None else None


# --- pure transforms -------------------------------------------------------------------


def conform(bronze_rows: DataFrame, source: str) -> DataFrame:
    """Resolve schema drift and cast the text fields; keeps the raw text for validation.

    For every typed column ``c`` the result has ``c`` (typed, null when the
    text does not parse) and ``_raw_c`` (the text).
    """
    spec = SOURCES[source]
    df = bronze_rows
    rescued = F.from_json(F.col("_rescued_data"), T.MapType(T.StringType(), T.StringType()))  # type: ignore[arg-type]
    text: dict[str, Column] = {}
    for name in spec.typed:
        column = F.col(name) if name in df.columns else F.lit(None).cast("string")
        if (source, name) == DRIFT_RENAMED_FIELD[:2]:
            column = F.coalesce(column, rescued.getItem(DRIFT_RENAMED_FIELD[2]))
        if (source, name) == DRIFT_NEW_FIELD:
            column = rescued.getItem(name)
        text[name] = column
    to_microseconds = F.regexp_replace(F.col("event_ts"), _BEYOND_MICROSECONDS, "$1")
    typed_ts = F.coalesce(*[F.try_to_timestamp(to_microseconds, F.lit(form)) for form in EVENT_TS_FORMATS])
    return df.select(
        "event_id",
        F.col("event_type").alias("_raw_event_type"),
        F.col("event_ts").alias("_raw_event_ts"),
        typed_ts.alias("event_ts"),
        F.to_date(typed_ts).alias("event_date"),
        "user_id",
        *[_cast(text[name], dtype).alias(name) for name, dtype in spec.typed.items()],
        *[text[name].alias(f"_raw_{name}") for name in spec.typed],
        *LINEAGE,
    )


def _cast(text: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.DateType):
        return F.try_to_date(text, "yyyy-MM-dd")
    return text.try_cast(dtype)


def validate(conformed: DataFrame, source: str, rules: PipelineSettings) -> DataFrame:
    """Add ``_reason``: null for a usable row, else every rule it breaks, ``;``-separated."""
    spec = SOURCES[source]
    checks: list[Column] = [
        F.when(F.col(key).isNull(), F.lit(f"null_key:{key}"))
        .when(F.col(key).rlike(r"^[\s\p{Z}]*$"), F.lit(f"empty_key:{key}"))  # also tabs, no-break spaces
        .when(_sent_as_json_container(F.col(key)), F.lit(f"invalid_type:{key}"))
        # "e1 " or "e1" with a zero-width space would be another event, or another user, than "e1".
        .when(F.col(key).rlike(r"^[\s\p{Z}]|[\s\p{Z}]$|[\p{Cc}\p{Cf}]"), F.lit(f"invalid_key:{key}"))
        for key in ("event_id", "user_id")
    ]
    # A line in another source's file: its fields would be read as this source's.
    checks.append(
        F.when(F.col("_raw_event_type") != F.lit(spec.source), F.lit("wrong_event_type"))
    )
    checks.append(
        F.when(F.col("_raw_event_ts").isNull(), F.lit("null_key:event_ts")).when(
            F.col("event_ts").isNull(), F.lit("invalid_type:event_ts")
        )
    )
    for name, dtype in spec.typed.items():
        wrong = F.col(f"_raw_{name}").isNotNull() & F.col(name).isNull()
        if isinstance(dtype, T.StringType):
            wrong = _sent_as_json_container(F.col(name))
        checks.append(F.when(wrong, F.lit(f"invalid_type:{name}")))
    checks.extend(F.when(F.col(f"_raw_{name}").isNull(), F.lit(f"missing:{name}")) for name in spec.required)
    bounds = dict(spec.ranges)
    if "amount" in spec.typed:
        bounds["amount"] = (0, rules.max_amount)
    for name, (low, high) in bounds.items():
        value, bound_type = _as_sent(name, spec.typed[name])
        outside = F.lit(False)
        if low is not None:
            outside = outside | (value < F.lit(low).cast(bound_type))
        if high is not None:
            outside = outside | (value > F.lit(high).cast(bound_type))
        checks.append(F.when(outside, F.lit(f"out_of_range:{name}")))
    end_of_arrival = F.to_timestamp(F.date_add(F.col("_arrival_date"), 1)) + F.make_interval(
        hours=F.lit(rules.future_tolerance_hours)
    )
    checks.append(F.when(F.col("event_ts") > end_of_arrival, F.lit("future_event_ts")))
    if source != "users":
        too_late = F.datediff(F.col("_arrival_date"), F.col("event_date")) > rules.allowed_lateness_days
        checks.append(F.when(too_late, F.lit("beyond_allowed_lateness")))
    reasons = F.array_compact(F.array(*checks))
    return conformed.withColumn(
        "_reason", F.when(F.size(reasons) > 0, F.array_join(reasons, ";"))
    )


def _sent_as_json_container(text: Column) -> Column:
    """Whether a text field was sent as a JSON object or array (bronze keeps its JSON text)."""
    return text.rlike(r"^\s*[\[{]") & F.try_parse_json(text).isNotNull()


def _as_sent(name: str, dtype: T.DataType) -> tuple[Column, T.DataType]:
    """The value a range is checked on, and the type its bounds take to compare exactly.

    A decimal is checked before it is rounded to its scale: ``1000.004`` is
    stored as 1000.00, but is above a limit of 1000. A value the column cannot
    hold is ``invalid_type`` alone.
    """
    if not isinstance(dtype, T.DecimalType):
        return F.col(name), dtype
    exact = F.coalesce(F.col(f"_raw_{name}").try_cast(_SENT_DECIMAL), F.col(name))
    return F.when(F.col(name).isNotNull(), exact), _SENT_DECIMAL


_SENT_DECIMAL = T.DecimalType(38, 18)


def pseudonymize(df: DataFrame, key: bytes) -> DataFrame:
    """Replace each raw identifier of :data:`PSEUDONYMS` in ``df`` with its keyed hash; the raw ids go."""
    present = {raw: hashed for raw, hashed in PSEUDONYMS.items() if raw in df.columns}
    hashed = {column: hmac_sha256(F.col(raw), key) for raw, column in present.items()}
    return df.withColumns(hashed).drop(*present)


def dedupe(rows: DataFrame, prefer: Column | None = None, within: Sequence[str] = ()) -> DataFrame:
    """One row per ``event_id``: the first to arrive (then file, then line).

    With ``prefer``, a copy for which it is true comes before every other.
    With ``within``, one row per ``event_id`` and value of those columns.
    """
    order = ["_arrival_date", "_ingested_at", "_source_file", "_line_no"]
    first = Window.partitionBy("event_id", *within).orderBy(
        *([F.coalesce(prefer, F.lit(False)).desc()] if prefer is not None else []), *order
    )
    return rows.withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")


def one_copy_per_line(rows: DataFrame, recorder: DataFrame) -> DataFrame:
    """One row per bronze line (``_batch_id``, ``_line_no``) of ``rows``.

    ``recorder``: per batch (``_batch_id``), the ``ingested_at`` of its row in
    bronze's ledger (``_recorded_at``; :func:`lakeward.bronze.recorded_stamps`).
    The copy kept is the one stamped with it (that of the run the ledger names,
    whose copy stays in bronze), else the earliest. The stamps are compared in
    Spark: a time sent from Python can come back an hour off in a process whose
    ``TZ`` has daylight saving.
    """
    first = Window.partitionBy("_batch_id", "_line_no").orderBy(bronze.by_recorder().desc(), "_ingested_at")
    return (
        rows.join(F.broadcast(recorder), "_batch_id", "left")
        .withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n", "_recorded_at")
    )


def quarantine_records(invalid: DataFrame, source: str, at: datetime) -> DataFrame:
    """Refused rows in the quarantine schema; the record holds no text as sent.

    A refused row cannot be trusted to hold in each field what the field is
    for: a line with its values shifted by one puts an email in ``city``. So
    the record shows a field's value only where it is a number, a date or a
    time that parses as its type (``amount`` sent as ``1000.004``), and the
    event type when it names a source. Any other value is described, not
    copied: ``<text of 12 characters>``; so is an ``event_id`` refused as a
    key. The row's lineage points at the line in bronze, the one layer that
    keeps raw values.
    """
    spec = SOURCES[source]
    refused_id = F.col("_reason").rlike(r"(^|;)[a-z_]+:event_id(;|$)")
    event_id = F.when(refused_id, _described(F.col("event_id"))).otherwise(F.col("event_id"))
    shown = {
        "event_id": event_id,
        "event_type": F.when(
            F.col("_raw_event_type").isin(list(SOURCES)), F.col("_raw_event_type")
        ).otherwise(_described(F.col("_raw_event_type"))),
        "event_ts": _shown_if_typed(F.col("_raw_event_ts"), F.col("event_ts")),
        **{
            name: _described(F.col(f"_raw_{name}"))
            if isinstance(dtype, T.StringType)
            else _shown_if_typed(F.col(f"_raw_{name}"), F.col(name))
            for name, dtype in spec.typed.items()
        },
    }
    return invalid.select(
        F.lit(source).alias("source"),
        event_id.alias("event_id"),
        "user_key",
        F.col("_reason").alias("reason"),
        F.to_json(F.struct(*[value.alias(name) for name, value in shown.items()])).alias("record"),
        "_arrival_date",
        "_source_file",
        "_line_no",
        "_batch_id",
        F.lit(at).cast("timestamp").alias("_quarantined_at"),
    )


def _shown_if_typed(text: Column, typed: Column) -> Column:
    """The text as sent when it parsed as its (number, date or time) type; else its description."""
    return F.when(typed.isNotNull(), text).otherwise(_described(text))


def _described(text: Column) -> Column:
    """What a value sent was, without its content: ``<object of 40 characters>``; null stays null."""
    kind = (
        F.when(~_sent_as_json_container(text), F.lit("text"))
        .when(text.rlike(r"^\s*\["), F.lit("array"))
        .otherwise(F.lit("object"))
    )
    return F.when(text.isNotNull(), F.format_string("<%s of %d characters>", kind, F.length(text)))


def _newer_record(ts: Column, event_id: Column, held_ts: Column, held_id: Column) -> Column:
    """A user record replaces the held one when it is newer; at the same time, the greater event_id wins."""
    return (ts > held_ts) | ((ts == held_ts) & (event_id > held_id))


def latest_user_state(users: DataFrame) -> DataFrame:
    """The newest record per ``user_key`` (ties: the greater event_id), with the batch it came in."""
    newest = Window.partitionBy("user_key").orderBy(F.desc("event_ts"), F.desc("event_id"))
    return (
        users.withColumn("_n", F.row_number().over(newest))
        .filter("_n = 1")
        .select(
            "user_key", "signup_date", "city", F.col("event_ts").alias("updated_ts"),
            "event_id", "_arrival_date", "_batch_id",
        )
    )


# --- writer ----------------------------------------------------------------------------


def table_specs(settings: Settings) -> list[tables.TableSpec]:
    """The silver tables, the silver quarantine and the ledger."""
    return [
        *[silver_spec(settings, source) for source in SOURCES],
        quarantine_spec(settings),
        ledger_spec(settings),
    ]


def require_contracts(settings: Settings, sources: Sequence[str]) -> dict[str, quality.Contract]:
    """The contracts of these sources' silver tables, each checked against its table's columns."""
    every = quality.load_contracts(settings.contracts_dir)
    _check_columns(settings, every)
    return quality.require_contracts(settings, [SOURCES[source].table for source in sources], every)


def check_contracts(settings: Settings) -> None:
    """Read every contract, and check those of silver tables against their columns.

    Without Great Expectations (its import takes seconds), so the CLI can
    ask before it starts Spark; whether each expectation's arguments suit
    Great Expectations, and whether a table with pending rows has a
    contract at all, :func:`require_contracts` checks when silver runs.
    """
    _check_columns(settings, quality.load_contracts(settings.contracts_dir, build=False))


def _check_columns(settings: Settings, contracts: Mapping[str, quality.Contract]) -> None:
    """Each contract of a silver table against the columns its gate sees.

    A contract for any other table is refused: no gate would ever run it, so a
    misspelt ``table:`` would leave its expectations unchecked without a word.
    """
    gated = [spec.table for spec in SOURCES.values()]
    for table, contract in contracts.items():
        if table not in gated:
            raise ConfigError(
                f"{contract.origin}: table: {table!r} is not a table silver writes behind a gate; "
                f"expected one of {', '.join(gated)}"
            )
    for source, spec in SOURCES.items():
        if spec.table in contracts:
            columns = silver_spec(settings, source).schema.fieldNames()
            quality.check_columns(contracts[spec.table], settings.table(spec.table), columns)


def ensure_tables(spark: SparkSession, settings: Settings) -> None:
    """Create the silver tables, the silver quarantine and the ledger if absent."""
    tables.ensure_tables(spark, table_specs(settings))


def process(
    spark: SparkSession, settings: Settings, source: str, dates: Sequence[date], key: bytes
) -> SilverResult:
    """Move the bronze rows of ``dates`` into silver; safe to repeat.

    Raises :class:`lakeward.quality.GateFailed` (table unchanged) when the contract fails.
    """
    return process_sources(spark, settings, {source: dates}, key)[0]


def process_sources(
    spark: SparkSession, settings: Settings, pending: Mapping[str, Sequence[date]], key: bytes
) -> list[SilverResult]:
    """Move the bronze rows of each source's pending dates into silver; see :func:`process_work`."""
    return process_work(spark, settings, work_on(spark, settings, pending), key)


def process_work(spark: SparkSession, settings: Settings, work: Work, key: bytes) -> list[SilverResult]:
    """Move the bronze rows of each source's dates in ``work`` into silver; safe to repeat.

    The sources are gated and written side by side, on one thread each: a
    source is a chain of small Spark jobs with driver-side Delta and planning
    work between them, and the chains of the others fill those gaps. The gate
    results and the refused rows of all sources are then written with one
    commit each, side by side, and the ledger rows after both, in one commit:
    the tables are shared, and a Delta write costs about a second whatever it
    writes. When a gate fails, every other
    source is still written and recorded, and :class:`lakeward.quality.GateFailed`
    is raised with the failing table unchanged.
    """
    at = tables.utc_now()
    todo = [(source, dates) for source, dates in work.dates.items() if dates]
    with interrupt.pool(1) as pool:
        # A small Spark job, while the contracts wait for Great Expectations' import.
        recorded = pool.submit(recorded_keys, spark, settings)
        try:
            contracts = require_contracts(settings, [source for source, _ in todo])
        finally:
            # A changed key is the first thing to say, also when a contract is broken too.
            _refuse_other_key_of_run(settings, recorded.result(), key)
    _pseudonymize_held_ids(spark, settings, key)
    gates: dict[str, list[quality.GateResult]] = {source: [] for source, _ in todo}
    with interrupt.pool(max(1, len(todo))) as pool:
        futures = [
            pool.submit(
                _write_source,
                spark, settings, source, dates, work.batches[source], key, at,
                contracts[SOURCES[source].table], gates[source],
            )
            for source, dates in todo
        ]
    written = [f.result() for f in futures if f.exception() is None]
    # The gates of the sources written, and of those a gate refused. A source that failed
    # after its gate passed (say a concurrent commit) wrote nothing: its batch is gated again.
    recorded_gates = [
        gate for (source, _), future in zip(todo, futures, strict=True)
        if future.exception() is None or isinstance(future.exception(), quality.GateFailed)
        for gate in gates[source]
    ]
    with interrupt.pool(2) as pool:
        results = pool.submit(quality.record, spark, settings, recorded_gates)
        refused = [w.refused for w in written if w.refused is not None]
        if refused:
            _merge_quarantine(spark, settings, reduce(DataFrame.unionByName, refused))
        results.result()
    if written:
        # Last: a ledger row marks its batch done, so it follows everything it
        # accounts for, the gate results included (a done batch is not gated again).
        _record(spark, settings, [(w.source, w.stats) for w in written], at, fingerprint(key))
    for w in written:
        r = w.result
        log.info(
            "silver %s: in=%d quarantined=%d duplicates=%d written=%d",
            r.source, r.rows_in, r.rows_quarantined, r.rows_duplicate, r.rows_written,
        )
    errors = [error for error in (f.exception() for f in futures) if error is not None]
    failed_gates = [error for error in errors if isinstance(error, quality.GateFailed)]
    # Any other error first: it stopped a source before its gate could say anything.
    for error in errors:
        if not isinstance(error, quality.GateFailed):
            raise error
    if failed_gates:
        raise quality.GateFailed.joined(failed_gates)
    return [w.result for w in written]


def _pseudonymize_held_ids(spark: SparkSession, settings: Settings, key: bytes) -> None:
    """Hash the raw identifiers a silver table written by an older lakeward still holds.

    Until 2026-12 ``silver.deliveries`` kept ``courier_id`` as sent. Such a
    table is rewritten once, in one commit, with ``courier_key`` in its place
    (the run's key, which :func:`_refuse_other_key_of_run` has just checked
    is the key of the rows silver holds). Its earlier versions keep the raw
    ids until they are vacuumed; gold, seeing the rewrite in the change feed,
    recomputes in full once.
    """
    for source in SOURCES.values():
        name = settings.table(source.table)
        if not set(source.typed) & set(PSEUDONYMS) or not tables.exists(spark, name):
            continue
        held = tables.read(spark, name)
        # The source's own raw ids, not yet hashed; a column someone added is left alone.
        raw = [c for c in source.typed
               if c in PSEUDONYMS and c in held.columns and PSEUDONYMS[c] not in held.columns]
        if raw:
            log.warning("%s: replacing the raw %s it holds with keyed hashes (one rewrite of the table)",
                        name, ", ".join(raw))
            hashed = held.withColumns(
                {PSEUDONYMS[c]: hmac_sha256(F.col(c), key) for c in raw}
            ).select(*[PSEUDONYMS[c] if c in raw else c for c in held.columns])
            tables.overwrite(hashed, name, replace_schema=True)


@dataclass(frozen=True)
class _Written:
    """One source written to its silver table; its refused rows and ledger counts still to record."""

    source: str
    refused: DataFrame | None
    """A local checkpoint, held until the shared quarantine MERGE; None when no row was read."""
    stats: dict[str, _BatchStats]

    @property
    def result(self) -> SilverResult:
        """The ledger counts summed over the batches this run records."""
        totals = [sum(counts[i] for _, *counts in self.stats.values()) for i in range(4)]
        return SilverResult(self.source, *totals)


_BatchStats = tuple[date, int, int, int, int]
"""A batch's arrival date, then its rows in, quarantined, dropped as duplicates, written."""


def _write_source(
    spark: SparkSession,
    settings: Settings,
    source: str,
    dates: Sequence[date],
    batches: Mapping[str, _Batch],
    key: bytes,
    at: datetime,
    contract: quality.Contract,
    gates: list[quality.GateResult],
) -> _Written:
    """Gate and write one source; its gate result is added to ``gates`` before anything can raise.

    No gate runs when the batches put no row in the table (see the comment there).

    Only the rows of batches in bronze's ledger are taken: bronze records a
    batch after its rows, so rows of a batch it has not recorded are what a
    run that died left: bronze removes them when it ingests the file again, or
    records them as they are if the file is gone or changed (:func:`bronze.find_lost`).
    """
    spec = silver_spec(settings, source)
    if source == "users":
        # A table created before it kept batch ids: its old rows get nulls, which no batch holds.
        tables.add_columns(spark, spec.name, T.StructType([spec.schema["_batch_id"]]))
    _require_own_columns(spark, spec)
    rows = tables.read(spark, settings.table(f"bronze_{source}")).filter(
        F.col("_arrival_date").isin(list(dates))
    )
    # On local disk, as bronze's cache: the four sources run side by side, and with their
    # caches in a 1g driver's heap, silver ran out of memory on 44M bronze rows
    # (docs/BENCHMARKS.md, "Driver memory").
    checked_rows = pseudonymize(validate(conform(rows, source), source, settings.pipeline), key)
    cached = checked_rows.persist(StorageLevel.DISK_ONLY)
    checked = cached
    try:
        arrivals = _arrivals(cached)
        # Found from the counts rather than filtered in the scan: a filter on a
        # few hundred batch ids cost about 4 s of a 1M-event load.
        unknown = [batch for batch in arrivals if batch not in batches]
        if unknown:
            # A row without a batch id is no batch's either (isin would make the whole filter null).
            named = [batch for batch in unknown if batch is not None]
            keep = F.col("_batch_id").isNotNull()
            checked = cached.filter(keep & ~F.col("_batch_id").isin(named) if named else keep)
            arrivals = {batch: a for batch, a in arrivals.items() if batch in batches}
        copied = sorted(
            batch_id for batch_id, a in arrivals.items()
            if (recorded_rows := batches[batch_id].rows) is not None and a.rows_in > recorded_rows
        )
        if copied:
            # Two bronze runs that overlap on a cluster can both append a file; the one whose
            # ledger row lost takes its copy back, and this run read bronze in between.
            log.warning(
                "silver %s: bronze holds %d batch(es) more than once, such as %s (copies of a bronze run "
                "that overlapped the one that recorded them, which it removes, or the next run if it "
                "died): each line is taken once",
                source, len(copied), copied[0],
            )
            recorder = bronze.recorded_stamps(spark, settings, copied)
            twice = F.coalesce(F.col("_batch_id").isin(copied), F.lit(False))
            checked = checked.filter(~twice).unionByName(one_copy_per_line(checked.filter(twice), recorder))
            arrivals = _arrivals(checked)
        _require_bronze_rows(settings, source, batches, arrivals)
        if not arrivals:
            # Files without a readable line: their batches are recorded, with nothing to gate.
            return _Written(source, None, _stats(batches, {}, {}))
        recorded = [batch_id for batch_id, batch in batches.items() if batch.recorded]
        own = _new_or_own(spark, checked.filter(F.col("_reason").isNull()), spec.name, source, recorded)
        candidates = _table_columns_and_new(own, spec).persist(StorageLevel.DISK_ONLY)
        try:
            written, new, held_on = _written_by_batch(candidates)
            # The gate covers every row the batches put in silver, those a run
            # that died before its ledger write already wrote included.
            put = candidates.filter(F.col(HELD_ON).isNull())
            batch = _batch_label(source, dates)
            if written:
                gate = quality.check(
                    settings, SOURCES[source].table, _final_columns(put, spec), batch=batch, contract=contract
                )
                gates.append(gate)
                gate.raise_if_failed()
            else:
                # No row to put (all duplicates, refused, or rows of batches already
                # done): a table-level or aggregate expectation (a row count, a
                # column's max) fails on no rows, and would hold these batches back
                # on every run.
                log.info("quality: %s not run for %s: no rows to add", contract.suite, batch)
            stats = _stats(batches, arrivals, written)
            # Held apart before the insert: a write to the table drops the cache of
            # what was read from it, and these few rows would be computed again.
            earlier = candidates.filter(F.col(HELD_ON).isNotNull()).localCheckpoint() if held_on else None
            if new:
                fresh = _final_columns(put.filter(F.col(NEW)), spec)
                _write(spark, spec.name, source, fresh, _event_dates(arrivals))
            if earlier is not None:
                _move_arrivals_back(spark, spec, earlier, held_on)
        finally:
            candidates.unpersist()
        # The refused rows are few: held apart (a local checkpoint, computed now
        # from the cache), they let the cache of every checked row go at once.
        invalid = checked.filter(F.col("_reason").isNotNull())
        refused = quarantine_records(invalid, source, at).localCheckpoint()
    finally:
        cached.unpersist()
    return _Written(source, refused, stats)


def _batch_label(source: str, dates: Sequence[date]) -> str:
    ordered = sorted(dates)
    span = f"{ordered[0]}" if len(ordered) == 1 else f"{ordered[0]}..{ordered[-1]}"
    return f"{source}:{span}"


@dataclass(frozen=True)
class _Arrival:
    """The checked rows of one bronze batch: how many, how many refused, the usable rows' event dates."""

    rows_in: int
    rows_refused: int
    event_dates: frozenset[date]


class SilverColumnsMissingError(RuntimeError):
    """A silver table lacks a column silver writes: dropped or renamed outside lakeward."""


def _require_own_columns(spark: SparkSession, spec: tables.TableSpec) -> None:
    """Refuse to write a table that lacks a column of its spec: those values would be lost for good.

    A column someone added is no obstacle: the writes name their columns.
    """
    held = set(tables.read(spark, spec.name).columns)
    missing = [column for column in spec.schema.fieldNames() if column not in held]
    if missing:
        raise SilverColumnsMissingError(
            f"{spec.name} lacks the column(s) {', '.join(missing)} that silver writes (dropped or "
            f"renamed outside lakeward?), and would lose their values: rename them back, or drop "
            f"{spec.name}, and the next silver run fills it again from bronze"
        )


class BronzeRowsMissingError(RuntimeError):
    """Bronze holds fewer rows of a batch than its ledger records: silver must not mark it done."""


def _require_bronze_rows(
    settings: Settings, source: str, batches: Mapping[str, _Batch], arrivals: Mapping[str, _Arrival]
) -> None:
    """Refuse a batch not yet taken whose rows bronze lost (a table dropped since bronze wrote it).

    Silver would record it with the rows it found, and never take the rest
    once bronze writes them again.
    """
    found = {batch_id: arrival.rows_in for batch_id, arrival in arrivals.items()}
    short = {
        batch_id: (found.get(batch_id, 0), batch.rows)
        for batch_id, batch in batches.items()
        if not batch.recorded and batch.rows and found.get(batch_id, 0) < batch.rows
    }
    if short:
        first = ", ".join(f"{b} ({held} of {rows})" for b, (held, rows) in sorted(short.items())[:3])
        raise BronzeRowsMissingError(
            f"silver {source}: {settings.table(f'bronze_{source}')} holds fewer rows than "
            f"{settings.table('ops_ingestion_batches')} records for {len(short)} batch(es), such as {first}; "
            "run lakeward run bronze first, which writes them again from their landing files"
        )


def _arrivals(checked: DataFrame) -> dict[str, _Arrival]:
    """Per bronze batch of the checked rows, in one Spark job."""
    usable_date = F.when(F.col("_reason").isNull(), F.col("event_date"))
    rows = checked.groupBy("_batch_id").agg(
        F.count(F.lit(1)).alias("rows_in"),
        F.count(F.col("_reason")).alias("rows_refused"),
        F.collect_set(usable_date).alias("event_dates"),
    ).collect()
    return {
        r["_batch_id"]: _Arrival(int(r["rows_in"]), int(r["rows_refused"]), frozenset(r["event_dates"]))
        for r in rows
    }


def _new_or_own(
    spark: SparkSession, rows: DataFrame, target: str, source: str, recorded: Sequence[str]
) -> DataFrame:
    """One row per event: those the target lacks (``_new`` true), and those it holds from their batch (false).

    A row the target holds from its own batch, a batch not ``recorded`` in the
    ledger, was written by a run that died before its ledger write: it is not
    written again, but it counts as the batch's, not as a duplicate, and it is
    gated. Rows of recorded batches are done: they are dropped, as a copy of
    an event silver has is. Copies of one event are deduplicated after the
    target is looked up, so that the copy the target holds is the one kept:
    kept first by arrival, a copy from an earlier day than the batch that
    wrote it would count for neither.

    Besides, for each event held from a later arrival day than a copy here,
    the earliest such copy, with ``_held_on`` set to the held row's event date
    (``silver.users``: the held record's arrival date; null on every other row):
    it is counted as a duplicate, and the held row takes its arrival date if it
    has the same values.
    """
    existing = tables.read(spark, target)
    own_batch = F.col("_held_by") == F.col("_batch_id")
    if recorded:
        own_batch = own_batch & ~F.col("_batch_id").isin(list(recorded))
    if source == "users":
        # The users table keeps the current state per user; older records change nothing.
        held = existing.select(
            "user_key",
            F.col("updated_ts").alias("_t_ts"),
            F.col("event_id").alias("_t_id"),
            F.col("_batch_id").alias("_held_by"),
            F.col("_arrival_date").alias("_t_arrival"),
        )
        by_event = held.select(F.col("_t_id").alias("event_id"), "_held_by")
        first = dedupe(rows.join(by_event, "event_id", "left"), prefer=own_batch).select(*rows.columns)
        newer = F.col("_t_ts").isNull() | _newer_record(
            F.col("updated_ts"), F.col("event_id"), F.col("_t_ts"), F.col("_t_id")
        )
        same_record = F.col("_t_id") == F.col("event_id")
        # The held record came on a later day than this copy of it (a snapshot day run
        # after a later one): it takes this copy's arrival, as when the days run in order.
        earlier_user = same_record & ~own_batch & (F.col("_arrival_date") < F.col("_t_arrival"))
        latest = latest_user_state(first)
        return (
            latest.join(held, "user_key", "left")
            .filter(newer | (same_record & own_batch) | earlier_user)
            .select(
                *latest.columns, newer.alias(NEW), F.when(earlier_user, F.col("_t_arrival")).alias(HELD_ON)
            )
        )
    # Every event date of the target is searched: event_id is the event's identity,
    # and a copy sent again with a corrected timestamp falls on another date.
    held = existing.select(
        "event_id",
        F.col("_batch_id").alias("_held_by"),
        F.col("event_date").alias("_held_date"),
        F.col("_arrival_date").alias("_held_arrival"),
        F.lit(True).alias("_held"),
    )
    is_held = F.col("_held").isNotNull()
    # A run of an arrival day out of order finds events silver holds from a
    # later day: the held row takes the earlier arrival of an identical copy,
    # as when the days run in order (gold counts an event from its arrival).
    # Such copies are deduplicated apart from the rows put in silver.
    earlier = is_held & ~own_batch & (F.col("_arrival_date") < F.col("_held_arrival"))
    return dedupe(
        rows.join(held, "event_id", "left")
        .filter(~is_held | own_batch | earlier)
        .select(
            *rows.columns,
            (~is_held).alias(NEW),
            F.when(earlier, F.col("_held_date")).alias(HELD_ON),
        ),
        within=[HELD_ON],
    )


def _event_dates(arrivals: Mapping[str, _Arrival]) -> list[date]:
    """The event dates of the usable rows of every batch."""
    return sorted(frozenset().union(*(a.event_dates for a in arrivals.values())))


def _final_columns(rows: DataFrame, spec: tables.TableSpec) -> DataFrame:
    return rows.select(*spec.schema.fieldNames())


def _table_columns_and_new(rows: DataFrame, spec: tables.TableSpec) -> DataFrame:
    """The table's columns (``_batch_id`` among them), ``_new`` and ``_held_on``, for the per-batch counts.

    Only these are cached: the raw text and lineage columns would double the
    width of what the gate and the write read.
    """
    return rows.select(*spec.schema.fieldNames(), NEW, HELD_ON)


def _written_by_batch(candidates: DataFrame) -> tuple[dict[str, int], int, list[date]]:
    """Rows each batch puts in silver (batches with none left out), how many are new, and dates.

    The dates are the event dates of held rows whose arrival an earlier copy
    moves back (``HELD_ON``).
    """
    put = F.col(HELD_ON).isNull()
    counts = candidates.groupBy("_batch_id").agg(
        F.count(F.when(put, 1)).alias("rows_written"),
        F.count(F.when(put & F.col(NEW), 1)).alias("rows_new"),
        F.collect_set(HELD_ON).alias("held_on"),
    ).collect()
    return (
        {r["_batch_id"]: int(r["rows_written"]) for r in counts if r["rows_written"]},
        sum(int(r["rows_new"]) for r in counts),
        sorted({day for r in counts for day in r["held_on"]}),
    )


def _stats(
    batches: Mapping[str, _Batch], arrivals: Mapping[str, _Arrival], written: Mapping[str, int]
) -> dict[str, _BatchStats]:
    """The ledger counts of the batches not yet recorded; a batch without rows counts zeros."""
    result: dict[str, _BatchStats] = {}
    for batch_id, batch in batches.items():
        if batch.recorded:
            continue
        a = arrivals.get(batch_id, _Arrival(0, 0, frozenset()))
        wrote = written.get(batch_id, 0)
        duplicates = a.rows_in - a.rows_refused - wrote
        result[batch_id] = (batch.arrival_date, a.rows_in, a.rows_refused, duplicates, wrote)
    return result


def _write(
    spark: SparkSession, name: str, source: str, fresh: DataFrame, event_dates: list[date]
) -> None:
    if source == "users":
        target = DeltaTable.forName(spark, name).alias("t")
        (
            target.merge(fresh.alias("s"), "t.user_key = s.user_key")
            .whenMatchedUpdate(condition=_newer_record(
                F.col("s.updated_ts"), F.col("s.event_id"), F.col("t.updated_ts"), F.col("t.event_id")
            ), set=tables.merge_source(fresh))
            .whenNotMatchedInsert(values=tables.merge_source(fresh))
            .execute()
        )
        return
    target = DeltaTable.forName(spark, name).alias("t")
    # ``fresh`` holds no event id the target had when _new_or_own read it. The
    # MERGE looks again on the batch's event dates at write time, so a run writing
    # the same events meanwhile does not get them in twice; the dates as literals
    # let Delta skip the files of every other date.
    same_event = (F.col("t.event_date") == F.col("s.event_date")) & (
        F.col("t.event_id") == F.col("s.event_id")
    )
    on_dates = F.col("t.event_date").isin(event_dates)
    target.merge(fresh.alias("s"), same_event & on_dates).whenNotMatchedInsert(
        values=tables.merge_source(fresh)
    ).execute()


def _move_arrivals_back(
    spark: SparkSession, spec: tables.TableSpec, earlier: DataFrame, held_on: list[date]
) -> None:
    """Give each held row the arrival date of its earlier copy, if the copy has the same values.

    A copy with other values (another timestamp, say) changes nothing: the
    held values with the copy's arrival would be a row neither order of the
    days gives, possibly one silver's checks refuse. Run again, it changes
    nothing either: the held row then has that date.
    """
    target = DeltaTable.forName(spark, spec.name).alias("t")
    same_row = F.col("t.event_id") == F.col("s.event_id")
    if "event_date" in spec.schema.fieldNames():
        # The held rows' event dates as literals let Delta skip the files of every other date.
        on_date = F.col("t.event_date") == F.col("s._held_on")
        same_row = same_row & on_date & F.col("t.event_date").isin(held_on)
    else:
        same_row = same_row & (F.col("t.user_key") == F.col("s.user_key"))
    values = [name for name in spec.schema.fieldNames() if name not in LINEAGE]
    same_values = reduce(Column.__and__, [F.col(f"t.{c}").eqNullSafe(F.col(f"s.{c}")) for c in values])
    (
        target.merge(earlier.select(*values, HELD_ON, "_arrival_date").alias("s"), same_row)
        .whenMatchedUpdate(
            condition=same_values & (F.col("s._arrival_date") < F.col("t._arrival_date")),
            set={"_arrival_date": F.col("s._arrival_date")},
        )
        .execute()
    )


def _merge_quarantine(spark: SparkSession, settings: Settings, records: DataFrame) -> None:
    (
        DeltaTable.forName(spark, settings.table("silver_quarantine"))
        .alias("t")
        .merge(
            records.alias("s"),
            "t._batch_id = s._batch_id AND t._line_no = s._line_no AND t.source = s.source",
        )
        .whenNotMatchedInsert(values=tables.merge_source(records))
        .execute()
    )


def _record(
    spark: SparkSession,
    settings: Settings,
    stats: Sequence[tuple[str, Mapping[str, _BatchStats]]],
    at: datetime,
    key_fingerprint: str,
) -> None:
    rows = [
        (source, day, batch, *counts, at, key_fingerprint)
        for source, per_batch in stats
        for batch, (day, *counts) in sorted(per_batch.items())
    ]
    if not rows:
        return
    updates = spark.createDataFrame(rows, LEDGER_SCHEMA)
    name = settings.table("ops_silver_batches")
    # A ledger created before rows named their batch: its old rows keep a null
    # ``batch_id``, which :func:`_batches` reads as covering their date.
    tables.add_columns(spark, name, LEDGER_SCHEMA)
    (
        DeltaTable.forName(spark, name)
        .alias("t")
        .merge(updates.alias("s"), "t.source = s.source AND t.batch_id = s.batch_id")
        .whenNotMatchedInsert(values=tables.merge_source(updates))
        .execute()
    )

