"""How ``lakeward sql`` prints a result: a text table, CSV, or one JSON object per line.

``table`` and ``csv`` print arrays, maps, structs, booleans, floating-point
numbers, timestamps, dates, times, intervals and variants as Spark's ``CAST(...
AS STRING)`` does (``1.0E10``, ``NaN``, ``2026-01-01 00:00:00.5`` in the session
time zone, ``+10000-01-01``), and binary values as hex at any depth. ``json``
writes each row as one object, timestamps, dates and times as that same text and
a float as the number its text shows (``0.1``, not the double nearest the
float); what JSON has no form for becomes text as Spark's ``to_json`` writes it:
NaN and the infinities, binary (base64), intervals, and map keys that are not
strings (with binary in them as base64; a map two of whose keys print alike is
refused); a variant is the JSON value it holds. In ``csv`` a null is an empty
field and an empty string ``""``, as Spark's CSV writer has them::

    print_rows(spark.sql("SELECT * FROM gold.user_daily"), "json", sys.stdout)
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TextIO

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.types import VariantVal

Convert = Callable[[Column], Column]
# Given a type, how to convert its values, or None to leave them as they are.
Conversion = Callable[[T.DataType], Convert | None]

_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})
_CSV_SPECIAL = (",", '"', "\r", "\n")
_INTERVALS = (T.CalendarIntervalType, T.DayTimeIntervalType, T.YearMonthIntervalType)
# Dates and times too: Python's date cannot hold a year past 9999, which Spark's can,
# and Python's text of a time is not Spark's (12:34:56.789000 for 12:34:56.789).
_DATES_AND_TIMES = (T.TimestampType, T.TimestampNTZType, T.DateType, T.TimeType)
# What table and csv print as Spark's text; Python's text of a float or a timestamp is not Spark's.
_TEXT_KINDS = (
    T.ArrayType, T.MapType, T.StructType, T.BooleanType, T.FloatType, T.DoubleType, T.DecimalType,
    *_DATES_AND_TIMES,
    *_INTERVALS, T.VariantType, T.BinaryType,
)


def print_rows(df: DataFrame, output_format: str, out: TextIO) -> None:
    """Write every row of ``df`` to ``out`` as ``table``, ``csv`` or ``json``.

    A statement without result columns (``CREATE TABLE``, ``DROP TABLE``) prints nothing.
    """
    columns = df.columns
    if not columns:
        return
    if output_format == "json":
        _check_unique_names(df.schema)
        df = _converted(df, _json_value, _json_key)
    else:
        df = _converted(df, _hex)
        df = _cast_to_text(df, _TEXT_KINDS)
    # One partition at a time (the next one fetched while this one prints), so a
    # large result streams instead of filling the driver's heap.
    rows = df.toLocalIterator(prefetchPartitions=True)
    if output_format == "table":
        # Column widths need every row first: they are held in Python, not in the JVM.
        out.write(format_table(columns, [list(row) for row in rows]))
        return
    if output_format == "json":
        for row in rows:
            record = json_ready(row.asDict(recursive=True))
            out.write(json.dumps(record, default=str, ensure_ascii=False, allow_nan=False) + "\n")
    else:
        out.write(_csv_line(columns))
        for row in rows:
            out.write(_csv_line(row))


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, like ``DataFrame.show`` without truncation."""
    # A line break inside a value would break the row; Spark's show() escapes them too.
    cells = [["NULL" if v is None else str(v).translate(_ESCAPES) for v in row] for row in rows]
    columns = [name.translate(_ESCAPES) for name in columns]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    body = [rule, line(columns), rule, *[line(r) for r in cells], rule]
    return "\n".join(body) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})\n"


def _csv_line(values: Sequence[Any]) -> str:
    """One CSV record as Spark's CSV writer writes it: a null is an empty field, an empty string ``""``."""
    fields = []
    for value in values:
        text = "" if value is None else str(value)
        if value is not None and (text == "" or any(c in text for c in _CSV_SPECIAL)):
            text = '"' + text.replace('"', '""') + '"'
        fields.append(text)
    return ",".join(fields) + "\n"


def json_ready(value: Any) -> Any:
    """Decimals as JSON numbers when that loses nothing, else as text (no silent rounding).

    A decimal is a number when the shortest text of the float nearest it reads back as the same
    decimal (``0.1`` is, a 20-digit one is not).

    NaN and the infinities, which JSON has no numbers for, as text, and binary as base64, as
    Spark's ``to_json`` writes them. A variant as the JSON it holds, not as text.
    """
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, VariantVal):
        # As JSON, as Spark's to_json writes a variant; its decimals follow the rule above.
        return json_ready(json.loads(value.toJson(), parse_float=Decimal))
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal) and value.is_finite() and Decimal(repr(float(value))) == value:
        return float(value)
    return value


def _check_unique_names(schema: T.StructType, where: str = "the result has more than one column") -> None:
    """A JSON object keeps one value per key, so a repeated name would lose data, nested ones too."""
    repeated = sorted(name for name, n in Counter(schema.names).items() if n > 1)
    if repeated:
        raise ValueError(
            f"{where} named {', '.join(map(repr, repeated))}; "
            "give them distinct names with AS for --format json"
        )
    for field in schema.fields:
        kind = field.dataType
        while isinstance(kind, T.ArrayType | T.MapType):
            kind = kind.elementType if isinstance(kind, T.ArrayType) else kind.valueType
        if isinstance(kind, T.StructType):
            _check_unique_names(kind, f"column {field.name!r} has more than one field")


def _json_value(kind: T.DataType) -> Convert | None:
    # PySpark cannot collect a calendar or year-month interval at all, and gives a
    # day-time one as Python's timedelta text; a timestamp as Python's text of a datetime.
    if isinstance(kind, (*_INTERVALS, *_DATES_AND_TIMES)):
        return _as_text
    # Collected, a float becomes the double nearest it: 0.1 would print as 0.10000000149011612.
    return _float_as_shown if isinstance(kind, T.FloatType) else None


def _float_as_shown(column: Column) -> Column:
    return column.cast("string").cast("double")


def _json_key(kind: T.DataType) -> Convert | None:
    """JSON keys are text: other keys as Spark's text, with binary in them as base64.

    Spark's own text of a struct or array would decode the binary in it as UTF-8,
    and two keys could then print the same.
    """
    if isinstance(kind, T.StringType):
        return None
    return lambda column: _as_text(_rewritten(column, kind, _base64))


SAME_TEXT_KEYS = (
    "two keys of one map print as the same text, and a JSON object keeps one value per key; "
    "use --format table or csv, or select the map's entries (map_entries)"
)


def _keys_as_text(original: Column, as_text: Convert) -> Column:
    """The map ``original`` with ``as_text`` applied to its keys, unless two keys then are equal.

    Spark would then fail as DUPLICATED_MAP_KEY, the error of a query that builds a
    map with a repeated key; this one says what happened instead.
    """
    keys = F.transform(F.map_keys(original), lambda key: as_text(key))
    collided = F.size(F.array_distinct(keys)) < F.size(original)
    return F.when(collided, F.raise_error(F.lit(SAME_TEXT_KEYS))).otherwise(
        F.map_from_arrays(keys, F.map_values(original))
    )


def _binary_as(convert: Convert) -> Conversion:
    # A cast to text would decode the bytes as UTF-8.
    return lambda kind: convert if isinstance(kind, T.BinaryType) else None


_base64 = _binary_as(F.base64)
_hex = _binary_as(F.hex)


def _as_text(column: Column) -> Column:
    return column.cast("string")


def _positional(df: DataFrame) -> DataFrame:
    """``df`` with its columns named ``_0``, ``_1``, ...: names may repeat in a SQL result."""
    return df.toDF(*[f"_{i}" for i in range(len(df.columns))])


def _cast_to_text(df: DataFrame, kinds: tuple[type, ...]) -> DataFrame:
    """Columns of these types as Spark prints them (``CAST AS STRING``), not as Python reprs."""
    fields = df.schema.fields
    if not any(isinstance(f.dataType, kinds) for f in fields):
        return df
    columns = [
        (_as_text(F.col(f"_{i}")) if isinstance(f.dataType, kinds) else F.col(f"_{i}")).alias(f.name)
        for i, f in enumerate(fields)
    ]
    return _positional(df).select(*columns)


def _converted(df: DataFrame, value: Conversion, key: Conversion | None = None) -> DataFrame:
    """``df`` with :func:`_rewritten` applied to every column."""
    fields = df.schema.fields
    if not any(_touches(f.dataType, value, key) for f in fields):
        return df
    columns = [_rewritten(F.col(f"_{i}"), f.dataType, value, key).alias(f.name) for i, f in enumerate(fields)]
    return _positional(df).select(*columns)


def _rewritten(column: Column, kind: T.DataType, value: Conversion, key: Conversion | None = None) -> Column:
    """``column`` with each value ``value`` has a conversion for converted, at any depth.

    With ``key``, map keys it has a conversion for are converted by it instead.
    """
    if not _touches(kind, value, key):
        return column
    convert = value(kind)
    if convert is not None:
        return convert(column)
    if isinstance(kind, T.ArrayType):
        return F.transform(column, lambda item: _rewritten(item, kind.elementType, value, key))
    if isinstance(kind, T.MapType):
        key_convert = key(kind.keyType) if key is not None else None
        if key_convert is not None:
            keyed = _keys_as_text(column, key_convert)
        else:
            keyed = F.transform_keys(column, lambda k, _: _rewritten(k, kind.keyType, value, key))
        return F.transform_values(keyed, lambda _, v: _rewritten(v, kind.valueType, value, key))
    assert isinstance(kind, T.StructType)  # the only other type _touches looks into
    # Fields are taken by position: names may repeat, or differ only in case.
    positional = T.StructType([T.StructField(f"_{i}", f.dataType) for i, f in enumerate(kind.fields)])
    renamed = column.cast(positional)
    parts = [_rewritten(renamed.getField(f"_{i}"), f.dataType, value, key).alias(f.name)
             for i, f in enumerate(kind.fields)]
    return F.when(column.isNotNull(), F.struct(*parts))


def _touches(kind: T.DataType, value: Conversion, key: Conversion | None) -> bool:
    """Whether :func:`_rewritten` changes anything in a value of this type."""
    if value(kind) is not None:
        return True
    if isinstance(kind, T.ArrayType):
        return _touches(kind.elementType, value, key)
    if isinstance(kind, T.MapType):
        keys_converted = key is not None and key(kind.keyType) is not None
        return keys_converted or _touches(kind.keyType, value, key) or _touches(kind.valueType, value, key)
    if isinstance(kind, T.StructType):
        return any(_touches(f.dataType, value, key) for f in kind.fields)
    return False
