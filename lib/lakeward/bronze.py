"""Bronze: landing files as received, plus ingestion metadata.

Every field of a source is kept as the text it arrived as (a number as written,
an object or array as compact JSON); fields the source schema does not know go
to ``_rescued_data`` as JSON, so schema drift loses nothing. Lines that are not a
JSON object go to the quarantine table with the reason, file and line number.

Transforms here are pure (:func:`split_sizes`, :func:`line_bases`, :func:`number_lines`, :func:`parse_lines`,
:func:`bronze_rows`, :func:`quarantine_rows`); the writer is :func:`ingest_sources`
(:func:`ingest` for one source).
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial, reduce
from pathlib import Path
from typing import Any, TypeVar

from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import columns, tables
from lakeward.config import Settings
from lakeward.sources.bitebridge import PERSONAL_FIELDS, SOURCE_FIELDS, SOURCES, landing_file

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# One line per landing file: its own logger, so that a run over many days can quiet it.
reconcile_log = logging.getLogger(f"{__name__}.reconcile")

META_FIELDS = T.StructType(
    [
        T.StructField("_rescued_data", T.StringType()),
        T.StructField("_arrival_date", T.DateType()),
        T.StructField("_ingested_at", T.TimestampType()),
        T.StructField("_source_file", T.StringType()),
        T.StructField("_line_no", T.LongType()),
        T.StructField("_batch_id", T.StringType()),
    ]
)

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("raw_line", T.StringType()),
        T.StructField("_arrival_date", T.DateType()),
        T.StructField("_ingested_at", T.TimestampType()),
        T.StructField("_source_file", T.StringType()),
        T.StructField("_line_no", T.LongType()),
        T.StructField("_batch_id", T.StringType()),
    ]
)

LEDGER_SCHEMA = T.StructType(
    [
        T.StructField("batch_id", T.StringType()),
        T.StructField("source", T.StringType()),
        T.StructField("arrival_date", T.DateType()),
        T.StructField("path", T.StringType()),
        T.StructField("size", T.LongType(), metadata={"comment": "bytes"}),
        T.StructField("checksum", T.StringType(), metadata={"comment": "SHA-256 of the file, hex"}),
        T.StructField("lines", T.LongType()),
        T.StructField("rows_written", T.LongType()),
        T.StructField("rows_quarantined", T.LongType()),
        T.StructField("ingested_at", T.TimestampType()),
    ]
)
# Ledgers written before the ledger's columns took the names the foundation issue gives.
_LEDGER_RENAMES = {"size_bytes": "size", "checksum_sha256": "checksum"}

MALFORMED = "malformed_json"
NOT_AN_OBJECT = "not_a_json_object"
BLANK = "blank_line"
DUPLICATE_KEY = "duplicate_key"
INVALID_UTF8 = "invalid_utf8"
# A line of a CRLF file keeps its "\r"; a line of only that is blank too.
_WHITESPACE = " \t\r"


class NoLandingDataError(FileNotFoundError):
    """No landing file exists for the requested arrival date."""


class ReconciliationError(RuntimeError):
    """Lines in a file do not equal rows written plus rows quarantined."""


@dataclass(frozen=True)
class LandingFile:
    """One landing file, identified by its content."""

    source: str
    arrival_date: date
    path: Path
    relative_path: str
    size_bytes: int
    checksum: str
    lines: int
    """Lines counted while hashing, independently of Spark's reader."""
    line_crc_sum: int
    """The sum of the CRC-32 of every line (without its ``\n``) as hashed: the sum Spark's
    ``crc32`` gives over the rows it read if, and only if (up to CRC collisions), it read
    those lines, so a file replaced between the hash and Spark's read is caught."""

    @property
    def batch_id(self) -> str:
        """Stable id: a re-landed file with other content is another batch."""
        return f"{self.source}-{self.arrival_date:%Y%m%d}-{self.checksum[:16]}"


@dataclass(frozen=True)
class IngestResult:
    """What one bronze run did for one source."""

    source: str
    files: int
    skipped: int
    lines: int
    rows_written: int
    rows_quarantined: int


def bronze_spec(settings: Settings, source: str) -> tables.TableSpec:
    """The bronze table of a source: its fields as text, plus metadata."""
    fields = [T.StructField(name, T.StringType()) for name in SOURCE_FIELDS[source]]
    schema = T.StructType(fields + META_FIELDS.fields)
    return tables.TableSpec(
        name=settings.table(f"bronze_{source}"),
        schema=schema,
        personal_columns=(*PERSONAL_FIELDS[source], "_rescued_data"),
        subject_column="user_id",
        # What bronze is read by: silver by arrival date, a re-run by batch.
        stats_columns=("_arrival_date", "_batch_id"),
    )


def quarantine_spec(settings: Settings) -> tables.TableSpec:
    """Lines that could not be parsed; raw lines may hold personal data."""
    return tables.TableSpec(
        name=settings.table("bronze_quarantine"),
        schema=QUARANTINE_SCHEMA,
        personal_columns=("raw_line",),
    )


def ledger_spec(settings: Settings) -> tables.TableSpec:
    """``ops.ingestion_batches``: one row per ingested landing file."""
    return tables.TableSpec(name=settings.table("ops_ingestion_batches"), schema=LEDGER_SCHEMA)


# --- pure transforms -------------------------------------------------------------------


def split_sizes(parsed: DataFrame) -> DataFrame:
    """Per split of each file (``_name``, ``_block``) and batch: its first id, its lines, how many refused.

    ``parsed`` is :func:`parse_lines` output that kept ``_name`` (the file's
    name), ``_block`` (the split's byte offset) and ``_mid``
    (``monotonically_increasing_id()`` taken in the scan), with ``_batch_id``.
    ``_crc_sum`` sums the CRC-32 of the lines' bytes, as ``LandingFile.line_crc_sum`` does.
    """
    return parsed.groupBy("_name", "_block", "_batch_id").agg(
        F.min("_mid").alias("_first_mid"),
        F.count(F.lit(1)).alias("_n"),
        F.count("_reason").alias("_refused"),
        F.sum(F.crc32(F.col("value").cast("binary"))).alias("_crc_sum"),
    )


def line_bases(splits: Iterable[Row]) -> dict[tuple[str, int], int]:
    """For each split, the base that numbers its lines: ``_line_no = _mid - base + 1``.

    ``splits``: rows of :func:`split_sizes`. A split's lines are read in order
    into one partition, so their ids are consecutive; the lines of the file's
    earlier splits come before them.
    """
    by_file: dict[str, list[Row]] = {}
    for split in splits:
        by_file.setdefault(split["_name"], []).append(split)
    bases = {}
    for name, parts in by_file.items():
        before = 0
        for split in sorted(parts, key=lambda part: part["_block"]):
            bases[(name, split["_block"])] = split["_first_mid"] - before
            before += split["_n"]
    return bases


def number_lines(lines: DataFrame, bases: Mapping[tuple[str, int], int]) -> DataFrame:
    """Add ``_line_no`` (1-based, per file) to lines that carry ``_name``, ``_block`` and ``_mid``.

    ``bases``: the base of each split (:func:`line_bases`). The ids must be
    those the bases were computed from: a scan planned again may cut the files
    into other partitions, and so give other ids. Works for any number of
    files and splits without moving the lines through Python.
    """
    with_base = _attach(lines, ["_name", "_block"], {key: (base,) for key, base in bases.items()},
                        "_name string, _block long, _base long")
    return (
        with_base.withColumn("_line_no", F.col("_mid") - F.col("_base") + 1)
        .drop("_base", "_mid", "_block", "_name")
    )


def _attach(
    df: DataFrame, keys: Sequence[str], rows: Mapping[tuple[Any, ...], tuple[Any, ...]], schema: str
) -> DataFrame:
    """``df`` with the values ``rows`` gives its ``keys``; ``schema`` types the keys, then the values.

    Only the rows of keys in ``rows`` remain. A run of a day or two has a
    few keys: looked up in an expression, they cost no broadcast job. Many
    would make the expression long, and slow for every row: they are joined.
    """
    if len(rows) > _INLINE_KEYS:
        table = df.sparkSession.createDataFrame([(*key, *row) for key, row in rows.items()], schema)
        return df.join(F.broadcast(table), list(keys))
    struct = T.StructType.fromDDL(schema)
    assert isinstance(struct, T.StructType)
    fields = struct.fields[len(keys):]
    matches = [
        (reduce(Column.__and__, [F.col(k) == F.lit(part) for k, part in zip(keys, key, strict=True)]), row)
        for key, row in rows.items()
    ]
    # One flat CASE per value column; null where no key matches (those rows are filtered out).
    values = {}
    for i, field in enumerate(fields):
        value = F.lit(None).cast(field.dataType)
        for n, (match, row) in enumerate(matches):
            literal = F.lit(row[i]).cast(field.dataType)
            value = F.when(match, literal) if n == 0 else value.when(match, literal)
        values[field.name] = value
    found = reduce(Column.__or__, [match for match, _ in matches], F.lit(False))
    return df.filter(found).withColumns(values)


_INLINE_KEYS = 16


def parse_lines(lines: DataFrame, fields: Sequence[str]) -> DataFrame:
    """Parse each ``value`` as a JSON object of text values.

    Adds one column per field (the value's JSON text, null when absent or
    JSON null), ``_rescued_data`` (unknown fields as JSON, or null) and
    ``_reason`` (null for a good line, else why it cannot be used).
    """
    known = F.array(*[F.lit(name) for name in fields])
    unknown = F.map_filter(F.col("_values"), lambda k, _v: ~F.array_contains(known, k))
    text = F.col("_text")
    reason = (
        F.when(F.trim(text, F.lit(_WHITESPACE)) == "", F.lit(BLANK))
        # The text reader keeps the bytes, but the JSON parser turns each one
        # that is not UTF-8 into U+FFFD, so values that differed there would
        # be equal (two user ids, say).
        .when(~F.is_valid_utf8(F.col("value")), F.lit(INVALID_UTF8))
        .when(
            F.col("_parsed").isNull(),
            # Valid JSON, but an array, a number, a string or null: one event is an object.
            F.when(F.try_parse_json(text).isNotNull(), F.lit(NOT_AN_OBJECT))
            .otherwise(F.lit(MALFORMED)),
        )
        # An object followed by more: Spark's parser stops after the first value.
        .when(~_one_value(text), F.lit(MALFORMED))
        # Escaped, a lone UTF-16 surrogate parses, but has no UTF-8 form: Spark
        # writes it as "?", and "u\ud800" and "u\udbff" would be one user.
        .when(text.contains("\\u") & _lone_surrogate(text), F.lit(INVALID_UTF8))
        # Spark's parser keeps a key's first value and drops the others.
        .when(_repeats_a_key(F.col("_parsed")), F.lit(DUPLICATE_KEY))
    )
    return (
        # A byte-order mark starts the line of a file that was joined to another
        # (`cat a.jsonl b.jsonl`); the reader drops only the one a file starts with.
        # Trimmed once here: every check below reads the trimmed text.
        lines.withColumn("_text", F.ltrim(F.col("value"), F.lit(_BOM)))
        .withColumn("_parsed", F.from_json(text, _TEXT_MAP, _STRICT))  # type: ignore[arg-type]
        .withColumn("_values", _as_written(text, F.col("_parsed")))
        .select(
            "*",
            *[F.col("_values").getItem(name).alias(name) for name in fields],
            F.when(F.size(unknown) > 0, F.to_json(unknown)).alias("_rescued_data"),
            reason.alias("_reason"),
        )
        .drop("_text", "_parsed", "_values")
    )


def _lone_surrogate(line: Column) -> Column:
    r"""Whether a string of the line escapes a UTF-16 surrogate that is not half of a pair.

    Escaped backslashes are replaced first, so that every backslash left
    starts an escape: ``\\ud800`` is text, ``\\\ud800`` an escaped backslash
    and a surrogate.
    """
    escapes = F.regexp_replace(line, F.lit(r"\\\\"), F.lit("#"))
    return escapes.rlike(_UNPAIRED)


_HIGH, _LOW = r"\\u[dD][89abAB][0-9a-fA-F]{2}", r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_UNPAIRED = f"{_HIGH}(?!{_LOW})|(?<!{_HIGH}){_LOW}"
_TEXT_MAP = T.MapType(T.StringType(), T.StringType())
_BOM = "\ufeff"
_BOM_BYTES = _BOM.encode()
# JSON as written: no single-quoted strings (Spark's parser takes them by default).
_STRICT = {"allowSingleQuotes": "false"}


# A number value: after a colon, a comma or a bracket, before a comma or a
# closing brace or bracket; as JSON writes it, or a NaN or an infinity as
# Spark's parser also takes them.
_NUMBER_VALUE = (
    r"([:,\[]\s*+)(-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?[0-9]++)?+|NaN|[+-]?Infinity|[+-]INF)"
    r"(?=\s*+[,}\]])"
)
# How Spark's parser writes a number it gives a string field: an integer as is,
# anything else as the double nearest it, NaN and infinities in quotes.
_SPARK_NUMBER_TEXT = r'^-?[0-9]++(?:\.[0-9]++)?+(?:E-?[0-9]++)?+$|^"-?(?:NaN|Infinity)"$'


def _as_written(line: Column, parsed: Column) -> Column:
    """``parsed``, the line's map of text values, with each number value as the line writes it.

    Spark's parser turns a number into a double and back before it gives a
    string field its text (``12.50`` becomes ``12.5``, ``1e400`` becomes
    ``"Infinity"``); only a JSON string reaches a field as written. So a
    line that parsed with a value in the form Spark gives a number is parsed
    again with its number values in quotes (most lines of a snapshot of people
    have none, and are spared the second parse). A string in a number's place
    keeps the line's structure. Quotes put around text inside a string
    literal split it into a string, a bare value and a string, which does not
    parse: such a line keeps Spark's text.
    """
    quoted = F.from_json(F.regexp_replace(line, F.lit(_NUMBER_VALUE), F.lit('$1"$2"')), _TEXT_MAP, _STRICT)  # type: ignore[arg-type]
    maybe_number = F.exists(F.map_values(parsed), lambda text: text.rlike(_SPARK_NUMBER_TEXT))
    return F.when(maybe_number, F.coalesce(_with_containers(line, quoted, parsed), parsed)).otherwise(parsed)


def _with_containers(line: Column, quoted: Column, parsed: Column) -> Column:
    """``quoted`` with each object or array value as ``parsed`` has it, its numbers not in quotes.

    Null when the line with its numbers in quotes does not parse, and for a
    line that names a key twice (it is quarantined): a lookup by key finds the
    key's first value only.
    """
    unquoted = F.transform_values(
        quoted, lambda key, text: F.when(_is_container(text), parsed[key]).otherwise(text)
    )
    # A line without a second brace or a bracket holds no object or array value.
    maybe_container = (F.locate("{", line, 2) > 0) | (F.instr(line, "[") > 0)
    holds_container = maybe_container & F.exists(F.map_values(quoted), _is_container)
    return F.when(quoted.isNull() | ~holds_container, quoted).when(~_repeats_a_key(quoted), unquoted)


def _is_container(text: Column) -> Column:
    return text.startswith("{") | text.startswith("[")


def _one_value(line: Column) -> Column:
    """Whether nothing but whitespace follows the line's first JSON value.

    Spark's JSON parser reads the first value and ignores what follows it, so
    ``{..}{..}`` or ``{..} x`` would parse as one object. Wrapped in an array,
    a second value or stray text no longer parses, and ``{..},{..}`` gives two
    elements; wrapped as the value of a field, text that begins with ``]`` no
    longer parses either. Only lines where something may follow an object's
    closing brace take these two extra parses.
    """
    maybe_more = line.rlike(r"(?s)\}.*\S|[^\s}]\s*$")
    as_array = F.from_json(F.concat(F.lit("["), line, F.lit("]")), T.ArrayType(T.StringType()), _STRICT)
    as_field = F.from_json(F.concat(F.lit('{"v":'), line, F.lit("}")), _TEXT_MAP, _STRICT)  # type: ignore[arg-type]
    return ~maybe_more | F.coalesce((F.size(as_array) == 1) & as_field.isNotNull(), F.lit(False))


def _repeats_a_key(parsed: Column) -> Column:
    """Whether the parsed object names one of its keys twice: the parser keeps both entries."""
    return F.size(F.array_distinct(F.map_keys(parsed))) < F.size(parsed)


def bronze_rows(parsed: DataFrame, fields: Sequence[str]) -> DataFrame:
    """The good lines, in the bronze table's column order."""
    return parsed.filter(F.col("_reason").isNull()).select(
        *fields, *[f.name for f in META_FIELDS.fields]
    )


def quarantine_rows(parsed: DataFrame, source: str) -> DataFrame:
    """The unusable lines, with the reason and where they came from."""
    return parsed.filter(F.col("_reason").isNotNull()).select(
        F.lit(source).alias("source"),
        F.col("_reason").alias("reason"),
        F.col("value").alias("raw_line"),
        *[f.name for f in QUARANTINE_SCHEMA.fields[3:]],
    )


# --- writer ----------------------------------------------------------------------------


def landing_files(settings: Settings, source: str, dates: Sequence[date]) -> list[LandingFile]:
    """The landing files of ``source`` for ``dates`` that exist, with their checksums."""
    found = []
    for day in dates:
        path = landing_file(settings.landing_dir, source, day)
        # A folder (or a pipe) of that name is not a landing file; the scan warns of it.
        if path.is_file():
            found.append(_describe_file(settings, source, day, path))
    return found


def _describe_file(settings: Settings, source: str, day: date, path: Path) -> LandingFile:
    digest = hashlib.sha256()
    size, lines, crc_sum, rest = 0, 0, 0, b""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            # Spark's reader drops a byte-order mark the file starts with.
            text = chunk.removeprefix(_BOM_BYTES) if size == 0 else chunk
            size += len(chunk)
            parts = (rest + text).split(b"\n")
            rest = parts.pop()
            lines += len(parts)
            crc_sum += sum(map(zlib.crc32, parts))
    if rest:
        lines += 1
        crc_sum += zlib.crc32(rest)
    return LandingFile(
        source=source,
        arrival_date=day,
        path=path,
        relative_path=str(path.relative_to(settings.data_root)),
        size_bytes=size,
        checksum=digest.hexdigest(),
        lines=lines,
        line_crc_sum=crc_sum,
    )


def table_specs(settings: Settings) -> list[tables.TableSpec]:
    """Every bronze table and the ingestion ledger."""
    return [
        *[bronze_spec(settings, source) for source in SOURCES],
        quarantine_spec(settings),
        ledger_spec(settings),
    ]


def ensure_tables(spark: SparkSession, settings: Settings) -> None:
    """Create every bronze table and the ingestion ledger if absent."""
    tables.ensure_tables(spark, table_specs(settings))


@dataclass(frozen=True)
class Restore:
    """Recorded batches whose rows a bronze table lost, to write again from their landing files.

    ``balanced``: every bronze table holds exactly the rows the ledger records.
    """

    batches: frozenset[str] = frozenset()
    dates: tuple[date, ...] = ()
    balanced: bool = False


def find_lost(spark: SparkSession, settings: Settings) -> Restore:
    """What bronze lost that its landing files still hold; the ledger made to account for every row.

    Every bronze table should hold the rows ``ops.ingestion_batches`` records
    for it. One that holds fewer was dropped and created again, or had rows
    deleted, outside lakeward. The tables' row counts (from Delta's log)
    against the ledger's totals show it; only then are the rows counted per
    batch. A batch short of rows is written again from its landing file if
    the file is still there unchanged (its batch id depends only on the
    file), so silver, which records the batches it took by id, takes none of
    it twice. The ledger keeps its rows until then, so a run that dies part
    way leaves the same shortfall for the next run to find. A batch whose
    file is gone or changed cannot come back: its ledger row is set to the
    rows the tables still hold, with a warning, so it is not looked for again.
    A table holding more rows than recorded is handled first: the ledger
    records the rows of files gone or changed
    (:func:`_record_held_rows_of_gone_files`), then copies of a line go
    (:func:`_remove_copies`).
    """
    # An older ledger's columns are renamed before anything here writes to it.
    _name_ledger_columns(spark, settings)
    names = {source: bronze_spec(settings, source).name for source in SOURCES}
    quarantine = quarantine_spec(settings).name
    ledger = settings.table("ops_ingestion_batches")
    # One row per landing file ever ingested: few enough to sum up here.
    recorded = [
        row.asDict()
        for row in tables.read(spark, ledger).filter(F.col("source").isin(list(SOURCES))).collect()
    ]
    counts = tables.row_counts(spark, [*names.values(), quarantine])
    expected = _recorded_totals(recorded, names, quarantine)
    over = [name for name, rows in expected.items() if counts[name] > rows]
    if over:
        found = _held_batches(spark, settings)
        recorded = _record_held_rows_of_gone_files(spark, settings, recorded, over, found)
        expected = _recorded_totals(recorded, names, quarantine)
        # After the recording: a batch of a gone file it just recorded may hold copies too.
        by_id = {row["batch_id"]: row for row in recorded}
        copied = [row["_batch_id"] for row in found if _has_copies(row, by_id.get(row["_batch_id"]))]
        if copied:
            holding = sorted({names[by_id[batch]["source"]] for batch in copied})
            _remove_copies(spark, settings, [*holding, quarantine], copied)
            # Also when another run removed them first.
            counts = tables.row_counts(spark, [*names.values(), quarantine])
    short = sorted(name for name, rows in expected.items() if counts[name] < rows)
    if not short:
        return Restore(balanced=counts == expected)
    held = {
        (row["table"], row["_batch_id"]): int(row["count"])
        for row in _rows_where(spark, short, F.lit(True)).groupBy("table", "_batch_id").count().collect()
    }

    def left(row: dict[str, Any]) -> tuple[int, int]:
        """The rows and quarantined rows of the batch that bronze still holds (as recorded if not short)."""
        written, quarantined = row["rows_written"] or 0, row["rows_quarantined"] or 0
        table, batch = names[row["source"]], row["batch_id"]
        return (held.get((table, batch), 0) if table in short else written,
                held.get((quarantine, batch), 0) if quarantine in short else quarantined)

    def is_short(row: dict[str, Any]) -> bool:
        written, quarantined = left(row)
        return written < (row["rows_written"] or 0) or quarantined < (row["rows_quarantined"] or 0)

    lost = [row for row in recorded if is_short(row)]
    days: dict[str, set[date]] = {}
    for row in lost:
        days.setdefault(row["source"], set()).add(row["arrival_date"])
    present = {f.batch_id for source, on in days.items() for f in landing_files(settings, source, sorted(on))}
    again = [row for row in lost if row["batch_id"] in present]
    gone = [row for row in lost if row["batch_id"] not in present]
    log.warning(
        "bronze: %s hold(s) fewer rows than %s records (rows deleted, or the table dropped or restored, "
        "outside lakeward?): "
        "%d batch(es) short, %d written again from their landing files",
        ", ".join(short), ledger, len(lost), len(again),
    )
    if gone:
        lost_rows = sum(
            (row["rows_written"] or 0) + (row["rows_quarantined"] or 0) - sum(left(row)) for row in gone
        )
        log.warning(
            "bronze: the landing files of %d short batch(es) are gone or changed, so %d row(s) cannot be "
            "restored; %s now records the rows bronze still holds for them",
            len(gone), lost_rows, ledger,
        )
        _set_counts(spark, ledger, [{**row, "rows_written": w, "rows_quarantined": q}
                                    for row in gone for w, q in [left(row)]])
    return Restore(frozenset(row["batch_id"] for row in again),
                   tuple(sorted({row["arrival_date"] for row in again})))


def _remove_copies(
    spark: SparkSession, settings: Settings, holding: Sequence[str], batches: Sequence[str]
) -> None:
    """Keep one row of each line of recorded ``batches`` held more than once in the tables ``holding``.

    Two runs that overlap on a cluster can both append a file: the one whose
    ledger row lost removes its copy (:func:`_take_back`), unless it died
    first. Of a line held more than once, the row stamped with the ledger
    row's ``ingested_at`` stays, or else the earliest (a batch written again
    after a loss keeps its old ledger row, so no row of it has that stamp).
    The stamps are compared in Spark against the ledger read as a table, not
    sent from Python. Only batches the ledger records are given: a run may be
    writing another one now, and whichever run's ledger row gets in, the
    other removes its own copy.
    """
    recorder = recorded_stamps(spark, settings, batches)
    removed = 0
    for name in holding:
        # Retried whole: a commit in between may have changed which copies there are.
        rows = _until_no_conflict(partial(_remove_copies_from, spark, name, recorder, batches), name)
        removed += rows
        if rows:
            log.warning("%s: %d row(s) of %d recorded batch(es) were copies of lines held by another run "
                        "(a run that ingested them beside the run that recorded them has not removed "
                        "them: it died, or is about to); removed", name, rows, len(batches))
    if not removed:
        log.warning("bronze: %d recorded batch(es) hold lines more than once with one stamp (copied "
                    "outside lakeward?), or another run removed the copies first; left as they are, "
                    "such as %s", len(batches), min(batches))


def recorded_stamps(spark: SparkSession, settings: Settings, batches: Sequence[str]) -> DataFrame:
    """Per batch of ``batches`` (``_batch_id``), the ``ingested_at`` of its ledger row (``_recorded_at``).

    The rows of a batch that bear it are those of the run the ledger names.
    """
    return tables.read(spark, settings.table("ops_ingestion_batches")).filter(
        F.col("batch_id").isin(list(batches))
    ).select(F.col("batch_id").alias("_batch_id"), F.col("ingested_at").alias("_recorded_at"))


def by_recorder() -> Column:
    """Whether a bronze row joined to :func:`recorded_stamps` is the recording run's copy of its line."""
    return F.coalesce(F.col("_ingested_at") == F.col("_recorded_at"), F.lit(False))


def _remove_copies_from(spark: SparkSession, name: str, recorder: DataFrame, batches: Sequence[str]) -> int:
    """:func:`_remove_copies` in one table; the rows removed."""
    copied = (
        tables.read(spark, name).filter(F.col("_batch_id").isin(batches))
        .select("_batch_id", "_line_no", "_ingested_at")
        .join(F.broadcast(recorder), "_batch_id")
        .groupBy("_batch_id", "_line_no").agg(
            F.max(by_recorder()).alias("_by_recorder"),
            F.min("_ingested_at").alias("_earliest"),
            F.max("_ingested_at").alias("_latest"),
            F.first("_recorded_at").alias("_recorded_at"),
        )
        # Copies with one stamp cannot be told apart, and are left.
        .filter(F.col("_earliest") < F.col("_latest"))
        .select("_batch_id", "_line_no",
                F.when(F.col("_by_recorder"), F.col("_recorded_at")).otherwise(F.col("_earliest"))
                .alias("_kept_at"))
    ).localCheckpoint()
    if copied.isEmpty():
        return 0
    others = "t._batch_id = s._batch_id AND t._line_no = s._line_no AND t._ingested_at <> s._kept_at"
    metrics = (
        DeltaTable.forName(spark, name).alias("t").merge(copied.alias("s"), others)
        .whenMatchedDelete().execute().first()
    )
    return int(metrics["num_deleted_rows"]) if metrics is not None else 0


def _has_copies(held: Row, recorded: Mapping[str, Any] | None) -> bool:
    """Whether a recorded batch of :func:`_held_batches` holds a line more than once, beyond its ledger row.

    A ledger row written before gone files were recorded by line may count a
    copy; that batch keeps its copies rather than be reported short.
    """
    if recorded is None:
        return False
    written, quarantined = held["rows_written"], held["rows_quarantined"]
    return (written > held["lines_written"] and written > (recorded["rows_written"] or 0)) or (
        quarantined > held["lines_quarantined"] and quarantined > (recorded["rows_quarantined"] or 0))


def _recorded_totals(
    recorded: Sequence[Mapping[str, Any]], names: Mapping[str, str], quarantine: str
) -> dict[str, int]:
    """Per bronze table (the quarantine included), the rows the ledger rows ``recorded`` say it holds."""
    expected = {name: 0 for name in [*names.values(), quarantine]}
    for row in recorded:
        expected[names[row["source"]]] += row["rows_written"] or 0
        expected[quarantine] += row["rows_quarantined"] or 0
    return expected


# A batch id as ``LandingFile.batch_id`` makes it: source, arrival date, start of the checksum.
_BATCH_ID = re.compile(r"(?P<source>[a-z_]+)-(?P<day>\d{8})-[0-9a-f]{16}")


def _held_batches(spark: SparkSession, settings: Settings) -> list[Row]:
    """Per batch id, what the bronze tables and the quarantine hold of it; one query.

    ``rows_*`` count rows, ``lines_*`` the distinct line numbers among them.
    """
    quarantine = quarantine_spec(settings).name
    names = [bronze_spec(settings, source).name for source in SOURCES]
    refused = F.col("table") == quarantine
    return (
        _rows_where(spark, [*names, quarantine], F.col("_batch_id").isNotNull(),
                    "_source_file", "_ingested_at", "_line_no", _batch_source().alias("_source"))
        .groupBy("_batch_id").agg(
            F.collect_set("_arrival_date").alias("dates"),
            F.count_if(F.col("_arrival_date").isNull()).alias("undated"),
            F.count_if(F.col("_line_no").isNull()).alias("unnumbered"),
            F.collect_set(F.when(~refused, F.col("table"))).alias("tables"),
            F.collect_set(F.when(refused, F.col("_source"))).alias("refused_sources"),
            F.count_if(~refused).alias("rows_written"),
            F.count_if(refused).alias("rows_quarantined"),
            F.count_distinct(F.when(~refused, F.col("_line_no"))).alias("lines_written"),
            F.count_distinct(F.when(refused, F.col("_line_no"))).alias("lines_quarantined"),
            F.min("_source_file").alias("path"),
            # As a number: a time collected into Python can come back an hour off under a ``TZ``
            # with daylight saving.
            F.unix_micros(F.min("_ingested_at")).alias("ingested_us"),
        )
        .collect()
    )


def _record_held_rows_of_gone_files(
    spark: SparkSession, settings: Settings, recorded: list[dict[str, Any]], over: Sequence[str],
    found: Sequence[Row],
) -> list[dict[str, Any]]:
    """Make the ledger record what bronze holds of batches whose landing file is gone or changed.

    Tables ``over`` hold more rows than the ledger records: rows of batches it
    does not record (a run died between its data and ledger writes, or the
    ledger lost rows: deleted or dropped), or more rows of a batch than it
    records (a table restored after its shortfall was recorded). A batch whose
    landing file is there unchanged is left to the run that takes its day,
    which writes the file again over the rows of a batch it does not record.
    Otherwise bronze holds the only copy of those rows, and removing them
    would lose what was received: the ledger records them as bronze holds
    them (a batch it lacked gets a row without the file's size and checksum),
    and silver takes those it has not taken. Only rows as lakeward writes them
    count: a batch id of the form a landing file gives, its date the rows'
    one arrival date, in its source's table and the quarantine, each with a
    line number. A line held more than once counts once (copies of two runs
    that died, :func:`_remove_copies`). ``found``: :func:`_held_batches`.
    Returns ``recorded`` with those rows set.
    """
    ledger = settings.table("ops_ingestion_batches")
    tables_of = {bronze_spec(settings, source).name: source for source in SOURCES}
    names_of = {source: name for name, source in tables_of.items()}
    by_id = {row["batch_id"]: row for row in recorded}

    def as_written(row: Row) -> dict[str, Any] | None:
        """The ledger row of a batch whose rows lakeward wrote, as bronze holds them; else None."""
        parts = _BATCH_ID.fullmatch(row["_batch_id"])
        source = parts["source"] if parts else None
        if parts is None or source not in SOURCES or len(row["dates"]) != 1 or row["undated"] or (
                row["unnumbered"]):
            return None
        [day] = row["dates"]
        if f"{day:%Y%m%d}" != parts["day"] or set(row["tables"]) - {names_of[source]} or (
                set(row["refused_sources"]) - {source}):
            return None
        return {
            "batch_id": row["_batch_id"], "source": source, "arrival_date": day, "path": row["path"],
            "size": None, "checksum": None, "lines": row["lines_written"] + row["lines_quarantined"],
            "rows_written": row["lines_written"], "rows_quarantined": row["lines_quarantined"],
            "ingested_at": (None if row["ingested_us"] is None
                            else columns.from_micros(row["ingested_us"])),
        }

    def beyond_ledger(batch: Mapping[str, Any]) -> bool:
        known = by_id.get(batch["batch_id"])
        return known is None or batch["rows_written"] > (known["rows_written"] or 0) or (
            batch["rows_quarantined"] > (known["rows_quarantined"] or 0))

    batches = [(row, as_written(row)) for row in found]
    foreign = [row["_batch_id"] for row, batch in batches if batch is None and row["_batch_id"] not in by_id]
    extra = [batch for _, batch in batches if batch is not None and beyond_ledger(batch)]
    present = {
        f.batch_id
        for source, day in {(batch["source"], batch["arrival_date"]) for batch in extra}
        for f in landing_files(settings, source, [day])
    }
    kept = [batch for batch in extra if batch["batch_id"] not in present]
    unrecorded = [b for b in extra if b["batch_id"] in present and b["batch_id"] not in by_id]
    recounted = [b for b in extra if b["batch_id"] in present and b["batch_id"] in by_id]
    if foreign:
        log.warning("bronze: %s hold(s) rows of %d batch(es) %s does not record that no lakeward run "
                    "wrote (written outside lakeward?), such as %s; left as they are",
                    ", ".join(over), len(foreign), ledger, foreign[0])
    if unrecorded:
        log.warning("bronze: %s hold(s) rows of %d batch(es) %s does not record whose landing files are "
                    "there (left by an interrupted run, or their ledger rows were deleted): a run of "
                    "their arrival days writes them again from those files",
                    ", ".join(over), len(unrecorded), ledger)
    if recounted:
        log.warning("bronze: %s hold(s) more rows than %s records of %d batch(es) whose landing files are "
                    "there (rows copied outside lakeward?); left as they are",
                    ", ".join(over), ledger, len(recounted))
    if not kept:
        return recorded
    new = [batch for batch in kept if batch["batch_id"] not in by_id]
    log.warning(
        "bronze: %s hold(s) rows of %d batch(es) whose landing files are gone or changed beyond what %s "
        "records (%d it has no row for: a run died before recording them, or its rows were deleted or "
        "it was dropped; the others restored to bronze): bronze holds their only copy, so %s now "
        "records %d row(s) and %d quarantined row(s) as bronze holds them",
        ", ".join(over), len(kept), ledger, len(new), ledger,
        sum(batch["rows_written"] for batch in kept), sum(batch["rows_quarantined"] for batch in kept),
    )
    _set_counts(spark, ledger, kept)
    set_ids = {batch["batch_id"] for batch in kept}
    return [row for row in recorded if row["batch_id"] not in set_ids] + [
        {**by_id.get(batch["batch_id"], batch), "rows_written": batch["rows_written"],
         "rows_quarantined": batch["rows_quarantined"]}
        for batch in kept
    ]


def _set_counts(spark: SparkSession, ledger: str, batches: Sequence[Mapping[str, Any]]) -> None:
    """Set the ledger's counts of ``batches`` (ledger rows) to theirs, in one commit; add those it lacks."""
    updates = spark.createDataFrame(
        [tuple(batch.get(name) for name in LEDGER_SCHEMA.fieldNames()) for batch in batches], LEDGER_SCHEMA
    )
    (
        DeltaTable.forName(spark, ledger).alias("t")
        .merge(updates.alias("s"), "t.batch_id = s.batch_id")
        .whenMatchedUpdate(set={"rows_written": "s.rows_written", "rows_quarantined": "s.rows_quarantined"})
        .whenNotMatchedInsert(values=tables.merge_source(updates))
        .execute()
    )


def ingest(spark: SparkSession, settings: Settings, source: str, dates: Sequence[date]) -> IngestResult:
    """Ingest the landing files of one source; see :func:`ingest_sources`."""
    return ingest_sources(spark, settings, [source], dates)[0]


def _warn_of_missing_files(files: Mapping[str, Sequence[LandingFile]]) -> None:
    """Warn of a source without a file on an arrival day others have one for.

    Every feed sends a file each day, empty or not: a missing one is a feed
    that failed to deliver, whose events would otherwise go unnoticed until
    they arrive late, or never.
    """
    days = {source: {f.arrival_date for f in fs} for source, fs in files.items()}
    every = set().union(*days.values())
    for source, held in days.items():
        missing = sorted(every - held)
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            log.warning("bronze %s: no landing file for %d arrival day(s) the other sources sent "
                        "files for (%s)", source, len(missing), shown)


def ingest_sources(
    spark: SparkSession,
    settings: Settings,
    sources: Sequence[str],
    dates: Sequence[date],
    *,
    again: Collection[str] = frozenset(),
    balanced: bool = False,
) -> list[IngestResult]:
    """Ingest the landing files of ``sources`` for ``dates`` that are not yet in the ledger.

    ``again``: batch ids the ledger records whose files are written again
    (see :func:`find_lost`): the rows they still have are removed first, and
    their ledger rows, which the same file gives again, are kept.
    ``balanced``: :func:`find_lost` has just found every table holding the
    rows the ledger records, so no crashed run left rows to remove.

    One Delta commit per table for all files of the run. A file is done when
    its ledger row exists; rows of its batch that a crashed run wrote without
    a ledger row are removed before it is written (once its lines are read and
    checked), so re-running after any failure adds nothing twice and keeps
    nothing the ledger does not account for. The
    sources share every step that does not depend on their fields: one
    ledger lookup, one cleanup query, one counting job, one quarantine write
    and one ledger write.
    """
    _name_ledger_columns(spark, settings)
    files = {source: landing_files(settings, source, dates) for source in sources}
    recorded = _recorded_batches(spark, settings, sources, dates)
    done = recorded - set(again)
    pending = {s: [f for f in fs if f.batch_id not in done] for s, fs in files.items()}
    for source in sources:
        if not pending[source]:
            if files[source]:
                log.info("bronze %s: %d file(s) already ingested, nothing to do", source, len(files[source]))
            else:
                log.info("bronze %s: no landing file on these dates, nothing to do", source)
    _warn_of_missing_files(files)
    todo = {s: pending[s] for s in sources if pending[s]}
    clean = bool(again) or not balanced
    written, quarantined, theirs = (_ingest_pending(spark, settings, todo, set(again), clean=clean) if todo
                                    else ({}, {}, set()))
    # A batch another run recorded first counts as skipped: this run kept none of its rows.
    kept = {s: [f for f in fs if f.batch_id not in theirs] for s, fs in pending.items()}
    return [
        IngestResult(
            source=source,
            files=len(files[source]),
            skipped=len(files[source]) - len(kept[source]),
            lines=sum(f.lines for f in kept[source]),
            rows_written=sum(written.get(f.batch_id, 0) for f in kept[source]),
            rows_quarantined=sum(quarantined.get(f.batch_id, 0) for f in kept[source]),
        )
        for source in sources
    ]


def _name_ledger_columns(spark: SparkSession, settings: Settings) -> None:
    """Give a ledger written before its columns were renamed their names, before anything is written."""
    ledger = settings.table("ops_ingestion_batches")
    try:
        tables.rename_columns(spark, ledger, _LEDGER_RENAMES)
    except Exception:
        # Two runs of other days may start at once on a cluster: one renames, and the
        # other's rewrite conflicts with that commit. The names are then right.
        if set(_LEDGER_RENAMES) & set(tables.read(spark, ledger).columns):
            raise
        log.info("%s: another run renamed its columns", ledger)


def _ingest_pending(
    spark: SparkSession, settings: Settings, pending: dict[str, list[LandingFile]], recorded: set[str],
    *, clean: bool,
) -> tuple[dict[str, int], dict[str, int], set[str]]:
    """Write the pending files; rows written and quarantined per batch id, and batches taken back.

    Files whose batch is already ``recorded`` get no second ledger row. The
    batches another run recorded first are returned too: this run took its
    rows of them back. ``clean``: the tables may hold rows of these batches
    (:func:`_remove_unrecorded_rows` removes them once the files are read and
    checked, so a file that fails the checks leaves them as they were).
    """
    specs = {source: bronze_spec(settings, source) for source in pending}
    quarantine = quarantine_spec(settings)
    every_file = [f for fs in pending.values() for f in fs]
    ingested_at = tables.utc_now()
    # On local disk, not in the heap: a day's users snapshot of 200k users is more than a
    # 1g driver holds beside the writes, and a cache in memory only spilled there anyway
    # (docs/BENCHMARKS.md, "Driver memory").
    parsed = {source: _read_files(spark, fs, ingested_at).persist(StorageLevel.DISK_ONLY)
              for source, fs in pending.items()}
    try:
        # One job fills every source's cache, counts the lines of each file and sizes its
        # splits. The lines are numbered from the cached ids, which the writes read.
        sized = [split_sizes(df).withColumn("_source", F.lit(source)) for source, df in parsed.items()]
        splits: dict[str, list[Row]] = {source: [] for source in pending}
        written: dict[str, int] = {}
        quarantined: dict[str, int] = {}
        crc_sums: dict[str, int] = {}
        for r in reduce(DataFrame.unionByName, sized).collect():
            splits[r["_source"]].append(r)
            batch, refused = r["_batch_id"], int(r["_refused"])
            quarantined[batch] = quarantined.get(batch, 0) + refused
            written[batch] = written.get(batch, 0) + int(r["_n"]) - refused
            crc_sums[batch] = crc_sums.get(batch, 0) + int(r["_crc_sum"])
        _reconcile(every_file, written, quarantined)
        _check_read_as_hashed(every_file, crc_sums)
        if clean:
            names = [*(spec.name for spec in specs.values()), quarantine.name]
            _remove_unrecorded_rows(
                spark, names, sorted({f.arrival_date for f in every_file}),
                {f.batch_id for f in every_file} - recorded, {f.batch_id for f in every_file} & recorded,
            )
        numbered = {source: number_lines(df, line_bases(splits[source])) for source, df in parsed.items()}
        writes = [
            (reduce(DataFrame.unionByName, [quarantine_rows(df, s) for s, df in numbered.items()]),
             quarantine.name),
            *[(bronze_rows(df, SOURCE_FIELDS[s]), specs[s].name) for s, df in numbered.items()],
        ]
        appended = dict(zip([name for _, name in writes], tables.append_side_by_side(writes), strict=True))
    finally:
        for df in parsed.values():
            df.unpersist()
    expected = {
        quarantine.name: sum(quarantined.get(f.batch_id, 0) for f in every_file),
        **{specs[s].name: sum(written.get(f.batch_id, 0) for f in fs) for s, fs in pending.items()},
    }
    try:
        _check_written(appended, expected)
    except ReconciliationError:
        _remove_own_rows(spark, list(appended), every_file, ingested_at)
        raise
    new_files = [f for f in every_file if f.batch_id not in recorded]
    theirs = (record_batches(spark, settings, new_files, written, quarantined, ingested_at) if new_files
              else set())
    if theirs:
        _take_back(spark, settings, list(appended), theirs,
                   sum(written.get(b, 0) + quarantined.get(b, 0) for b in theirs))
    return written, quarantined, theirs


def _remove_own_rows(
    spark: SparkSession, names: Sequence[str], files: Sequence[LandingFile], ingested_at: datetime
) -> None:
    """Delete from tables ``names`` the rows this run (stamped ``ingested_at``) wrote of ``files``.

    Rows a write gave other than the lines counted came from a read of the
    files after the counting job, which may have found one changed: left in
    place under a batch id the file no longer gives, no later run would take
    them for its own, and :func:`find_lost` would record them as a gone file's.
    """
    condition = (
        F.col("_arrival_date").isin(sorted({f.arrival_date for f in files}))
        & F.col("_batch_id").isin(sorted({f.batch_id for f in files}))
        & (F.col("_ingested_at") == F.lit(ingested_at).cast("timestamp"))
    )
    for name in names:
        _until_no_conflict(partial(_delete, spark, name, condition), name)


def _take_back(
    spark: SparkSession, settings: Settings, names: Sequence[str], batches: set[str], mine: int
) -> None:
    """Remove this run's copies of the lines of ``batches`` that another run recorded first.

    Two runs that overlap (possible on a cluster, where no lock keeps them apart)
    can both find a file pending and both append its rows; only one ledger row
    gets in. Of each line held twice, the copy of the run the ledger names stays
    (:func:`_remove_copies_from`). A line this run holds alone stays too: this
    run's clean-up took the other run's rows, appended but not yet recorded, for
    an interrupted run's and removed them, so this run's copy is the only one.
    ``mine``: the rows this run wrote of ``batches``.
    """
    log.warning("bronze: another run ingested %d of these files at the same time and recorded them "
                "first; this run's copies of their rows are removed", len(batches))
    recorder = recorded_stamps(spark, settings, sorted(batches))
    removed = 0
    for name in names:
        # The next run of another day may be removing the same rows (:func:`_remove_copies`).
        removed += _until_no_conflict(
            partial(_remove_copies_from, spark, name, recorder, sorted(batches)), name
        )
    if removed < mine:
        log.warning("bronze: %d of this run's rows of those files stay: the other run's copies of "
                    "their lines are gone (this run removed them as left by an interrupted run)",
                    mine - removed)


def _read_files(spark: SparkSession, files: Sequence[LandingFile], ingested_at: datetime) -> DataFrame:
    """The parsed lines of one source's ``files``, their batch, file name, split and id; not numbered."""
    # The files are one source's, one per arrival day, so their names
    # (YYYY-MM-DD.jsonl) tell them apart. Matched by name rather than by path:
    # Spark reports a path as a URI, which spells characters such as "+" or
    # "é" in the data root otherwise than Python does.
    by_name = {f.path.name: f for f in files}
    if len(by_name) != len(files):
        raise ValueError(f"files read together must have distinct names: {sorted(f.path for f in files)}")
    # Lines end at "\n" only, as the ledger counts them; by default Spark also
    # ends one at a bare "\r", and the line counts would no longer reconcile.
    # The folder resolved, not the file: a landing file that is a symbolic link would
    # be read under its target's name, which may be another.
    raw = spark.read.text([str(f.path.parent.resolve() / f.path.name) for f in files],
                          lineSep="\n").select(
        "value",
        F.col("_metadata.file_name").alias("_name"),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_mid"),
    )
    return parse_lines(
        _attach(
            raw, ["_name"], {(n,): (f.relative_path, f.batch_id, f.arrival_date) for n, f in by_name.items()},
            "_name string, _source_file string, _batch_id string, _arrival_date date",
        )
        .withColumn("_ingested_at", F.lit(ingested_at).cast("timestamp")),
        SOURCE_FIELDS[files[0].source],
    )


def _recorded_batches(
    spark: SparkSession, settings: Settings, sources: Sequence[str], dates: Sequence[date]
) -> set[str]:
    """The ids of every batch the ledger records for ``sources`` on the arrival ``dates``."""
    if not sources or not dates:
        return set()
    ledger = tables.read(spark, settings.table("ops_ingestion_batches"))
    rows = ledger.filter(
        F.col("source").isin(list(sources)) & F.col("arrival_date").isin(list(dates))
    ).select("batch_id").collect()
    return {row["batch_id"] for row in rows}


def _batch_source() -> Column:
    """The source of a row's batch: a batch id begins with it (``LandingFile.batch_id``)."""
    return F.substring_index(F.col("_batch_id"), "-", 1)


def _rows_where(
    spark: SparkSession, names: Sequence[str], condition: Column, *columns: str | Column
) -> DataFrame:
    """``table``, ``_arrival_date``, ``_batch_id`` and ``columns`` of the ``condition`` rows of ``names``."""
    return reduce(
        DataFrame.unionByName,
        [tables.read(spark, name).filter(condition)
         .select(F.lit(name).alias("table"), "_arrival_date", "_batch_id", *columns)
         for name in names],
    )


def _remove_unrecorded_rows(
    spark: SparkSession, names: Sequence[str], dates: Sequence[date], unrecorded: set[str], again: set[str]
) -> None:
    """Delete from tables ``names`` the rows of the batches about to be written on ``dates``.

    ``unrecorded``: the batches of the run's files the ledger does not record.
    Such a batch has rows only if a run died between its data write and its
    ledger write (or the ledger lost its row), and then a table holds more
    rows than the ledger records (``balanced`` in :func:`ingest_sources` skips
    this query when none does; such rows would go unseen only if as many
    recorded rows of the same table had also been deleted outside lakeward
    since). ``again``: batches short of rows whose files are written again,
    over the rows bronze still holds of them. Rows of other batches the ledger
    lacks stay: their landing files are gone or changed, so bronze holds
    their only copy (:func:`find_lost` records them).
    """
    doomed = unrecorded | again
    if not doomed:
        return
    condition = F.col("_arrival_date").isin(list(dates)) & F.col("_batch_id").isin(sorted(doomed))
    taken_again = F.col("_batch_id").isin(sorted(again)) if again else F.lit(False)
    found = (
        _rows_where(spark, names, condition)
        .groupBy("table").agg(F.count_if(~taken_again).alias("unrecorded")).collect()
    )
    for row in found:
        if row["unrecorded"]:
            log.warning("%s: removing %d row(s) of batches the ledger does not record (left by an "
                        "interrupted run, or their ledger rows were deleted); their files are taken again",
                        row["table"], row["unrecorded"])
        else:
            log.info("%s: removing the rows it still holds of batches written again from their landing files",
                     row["table"])
        # A run of another day may be removing copies in the same files (:func:`_remove_copies`).
        _until_no_conflict(partial(_delete, spark, row["table"], condition), row["table"])


def _reconcile(files: Sequence[LandingFile], written: dict[str, int], quarantined: dict[str, int]) -> None:
    """Lines in each file (counted by Python) = good rows + quarantined rows (parsed by Spark)."""
    totals: dict[str, Counter[str]] = {}
    for f in files:
        good, bad = written.get(f.batch_id, 0), quarantined.get(f.batch_id, 0)
        if f.lines != good + bad:
            raise ReconciliationError(
                f"{f.relative_path}: {f.lines} lines in the file but {good} bronze rows "
                f"+ {bad} quarantined rows; nothing was written"
            )
        reconcile_log.info(
            "bronze %s: %s lines=%d written=%d quarantined=%d (reconciled)",
            f.source, f.relative_path, f.lines, good, bad,
        )
        totals.setdefault(f.source, Counter()).update(files=1, lines=f.lines, written=good, quarantined=bad)
    for source, total in totals.items():
        if total["files"] > 1:
            log.info(
                "bronze %s: %d files lines=%d written=%d quarantined=%d (each file reconciled)",
                source, total["files"], total["lines"], total["written"], total["quarantined"],
            )


def _check_read_as_hashed(files: Sequence[LandingFile], crc_sums: Mapping[str, int]) -> None:
    """The lines Spark read of each file must be those hashed: a file may be replaced in between."""
    changed = [f.relative_path for f in files if crc_sums.get(f.batch_id, 0) != f.line_crc_sum]
    if changed:
        raise ReconciliationError(
            f"{', '.join(changed)}: the lines Spark read are not those whose checksum was taken (the "
            "file was replaced or rewritten in between); nothing was written: run bronze again to "
            "ingest it as it is now"
        )


def _check_written(appended: dict[str, int], expected: dict[str, int]) -> None:
    """The rows each write put in its table must be the good (or quarantined) lines counted before it.

    The write reads the files again if Spark dropped part of the cache, and a
    file changed in between would then give other rows than the counts the
    ledger is about to record. The rows are counted as the writes run, so the
    check costs no query.
    """
    wrong = {name: (appended[name], rows) for name, rows in expected.items() if appended[name] != rows}
    if wrong:
        raise ReconciliationError(
            f"rows written vs lines counted per table: {wrong}; "
            "no ledger row was written and this run's rows were removed, "
            "so the next run writes these files again"
        )


def record_batches(
    spark: SparkSession,
    settings: Settings,
    files: Sequence[LandingFile],
    written: dict[str, int],
    quarantined: dict[str, int],
    ingested_at: datetime,
) -> set[str]:
    """Add the ledger rows of ingested files: from now on they count as done.

    A batch another run recorded first keeps that run's row (an insert-only
    MERGE on ``batch_id``); returns those batches. Two such MERGEs at once make
    the later one fail on Delta's conflict check; it is tried again, and then
    finds the other's rows.
    """
    rows = [
        (
            f.batch_id, f.source, f.arrival_date, f.relative_path, f.size_bytes, f.checksum,
            f.lines, written.get(f.batch_id, 0), quarantined.get(f.batch_id, 0), ingested_at,
        )
        for f in files
    ]
    updates = spark.createDataFrame(rows, LEDGER_SCHEMA)
    ledger = settings.table("ops_ingestion_batches")

    def insert_new() -> Row | None:
        return (
            DeltaTable.forName(spark, ledger).alias("t")
            .merge(updates.alias("s"), "t.batch_id = s.batch_id")
            .whenNotMatchedInsert(values=tables.merge_source(updates))
            .execute()
            .first()
        )

    metrics = _until_no_conflict(insert_new, ledger)
    if metrics is not None and metrics["num_inserted_rows"] == len(rows):
        return set()
    ours = [f.batch_id for f in files]
    return {
        row["batch_id"]
        for row in tables.read(spark, ledger)
        .filter(F.col("batch_id").isin(ours) & (F.col("ingested_at") != F.lit(ingested_at)))
        .select("batch_id").collect()
    }


def _delete(spark: SparkSession, name: str, condition: Column) -> None:
    DeltaTable.forName(spark, name).delete(condition)


# A write that meets another run's commit is tried again, at most this many times in all.
_WRITE_ATTEMPTS = 3


def _until_no_conflict(write: Callable[[], _T], table: str) -> _T:
    """``write()``, tried again when another run's commit to ``table`` made it fail Delta's conflict check.

    Only for writes that read what they change again when tried again: an
    insert-only MERGE, a delete.
    """
    for attempt in range(_WRITE_ATTEMPTS):
        try:
            return write()
        except Exception as err:
            if "DELTA_CONCURRENT" not in str(err) or attempt + 1 == _WRITE_ATTEMPTS:
                raise
            log.info("%s: another run wrote to it at the same time; trying again", table)
    raise AssertionError("unreachable")
