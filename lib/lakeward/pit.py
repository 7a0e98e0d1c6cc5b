"""Point-in-time (as-of) joins of training labels to a feature history.

For every label row, :func:`as_of_join` takes the feature row with the same
keys and the latest feature timestamp at or before the label timestamp, so a
label never sees a value that was not yet known::

    from datetime import timedelta

    training = as_of_join(
        labels,                      # user_key, label_ts, churned
        features,                    # user_key, feature_ts, orders_30d, ...
        keys=["user_key"],
        label_ts="label_ts",
        feature_ts="feature_ts",
        ttl=timedelta(days=7),       # ignore feature rows older than a week
        prefix="f_",
    )
    # user_key, label_ts, churned, f_feature_ts, f_orders_30d, ...

How it works: both inputs are unioned into one frame (labels tagged kind 1,
feature rows kind 0 with all their columns packed into ONE struct, so a wide
feature table does not widen the window), shuffled once by the keys and
ordered by ``(ts, kind, tie-break)``. A running ``last(payload, ignorenulls)``
then hands each label the newest feature struct at or before it; feature rows
sort before labels with the same timestamp, which makes the upper bound
inclusive. The TTL is checked afterwards against the feature timestamp carried
inside the struct. There is no join between the two sides, hence no range-join
or cartesian blow-up: one shuffle per side.

A wide feature table (many or large columns) is first reduced to the rows
some label can use: a narrow pass of the same window over keys and
timestamps only finds, per label, the timestamp of its match; the feature
rows at those ``(keys, timestamp)`` pairs (ties included) are kept by a
semi-join with the pairs broadcast, before any wide row is shuffled. The
result is the same, because every label's match and all its ties survive.
``prefilter`` forces this on or off; by default it is on when the feature
payload is estimated at more than ``WIDE_PAYLOAD_BYTES`` per row and Spark's
plan puts the labels' keys and timestamps at no more than
``PREFILTER_MAX_PAIR_BYTES``, and at no more than a sixteenth of the driver's
heap (labels Spark cannot size, such as a frame made from Python rows, are
taken as too many). The pairs are at most one per label row; the
driver collects them, and every executor holds them in memory.

With ``time_buckets=n`` the timeline is additionally cut into ``n`` equal time
buckets (over the range of all timestamps) and the window runs per
``(keys, bucket)``, so one hot key is spread over up to ``n`` tasks. A small
aggregate per ``(keys, bucket)`` carries the newest feature of the earlier
buckets into each bucket as a synthetic feature row, which keeps the result
identical to the unbucketed join. It reads each input three times (range,
carry-forward aggregate, main window) and shuffles the feature side twice, so
use it for skewed keys only and cache expensive inputs first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import columns

__all__ = ["AsOfJoinError", "ColumnClashError", "MissingColumnsError", "as_of_join"]

# Internal column names of the unioned frame. User columns only ever live
# inside the two structs, so these cannot collide with them.
_KIND = "__pit_kind"
_TS = "__pit_ts"
_LABEL = "__pit_label"
_PAYLOAD = "__pit_payload"
_MATCH = "__pit_match"
_BUCKET = "__pit_bucket"
_LO = "__pit_lo"
_HI = "__pit_hi"
_LAST = "__pit_last"
_CARRIED = "__pit_carried"
_FOUND = "__pit_found"
_FEATURE, _LABEL_KIND = 0, 1

WIDE_PAYLOAD_BYTES = 256
"""Estimated bytes per feature row above which the join prefilters the feature rows."""
PREFILTER_MAX_PAIR_BYTES = 256 * 1024 * 1024
"""Most bytes of label (keys, timestamp) pairs, as Spark's plan estimates them, that the
automatic prefilter collects and broadcasts; above it the feature rows are not prefiltered."""

# Spark's timestamps run from year 1 to 9999: no two are further apart than this, so a
# longer ttl bounds nothing, and is not used (from about 292,000 years on, Spark's
# interval type cannot even hold it).
_LONGEST_SPAN = timedelta(days=366 * 10_000)
# Spark's JSON text of a time keeps milliseconds only by default: ties are told apart to the microsecond.
_JSON_TIMES = {
    "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX",
    "timestampNTZFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSS",
}


class AsOfJoinError(ValueError):
    """Arguments of :func:`as_of_join` that do not fit the inputs."""


class MissingColumnsError(AsOfJoinError, columns.MissingColumnsError):
    """A column named in the arguments is not in the DataFrame it should be in.

    Also a :class:`lakeward.columns.MissingColumnsError`, which ``labels`` and ``splits`` raise.
    """


class ColumnClashError(AsOfJoinError):
    """Two output columns would have the same name."""


def as_of_join(
    labels: DataFrame,
    features: DataFrame,
    *,
    keys: Sequence[str],
    label_ts: str,
    feature_ts: str,
    ttl: timedelta | None = None,
    prefix: str | None = None,
    time_buckets: int | None = None,
    prefilter: bool | None = None,
) -> DataFrame:
    """Attach to each label row the latest feature row known at the label's time.

    For each row of ``labels``, the matching feature row is the one with equal
    ``keys`` and the greatest ``feature_ts`` such that
    ``label_ts - ttl <= feature_ts <= label_ts`` (both bounds inclusive; no
    lower bound when ``ttl`` is None). Without a match the feature columns are
    null.

    - Every label row comes out exactly once, duplicates included; label rows
      with a null key or a null ``label_ts`` come out with null features.
    - Feature rows with a null key or a null ``feature_ts`` never match.
    - Keys match with equi-join semantics (``=``, never null to null).
    - Column names are matched as Spark resolves them: regardless of case
      unless ``spark.sql.caseSensitive`` is on. The output keeps the
      spelling of ``labels`` for its columns and of ``features`` for the
      feature columns.
    - ``ttl`` is an exact duration (``timedelta(days=1)`` is 86 400 s, also
      across a daylight-saving change of the session time zone; two dates
      are whole days of 86 400 s apart). One longer than any two timestamps
      can be apart (``timedelta.max``) is the same as None.
    - A date column counts as midnight at the start of its day, in the
      session time zone: a feature dated d is known from 00:00 on d, and a
      label dated d sees only features known by 00:00 on d. A feature
      table that is known only at the end of its day needs a timestamp (as
      ``gold.user_features``' ``feature_ts`` is) or dates shifted by a day.

    **Tie-break.** When several feature rows of a key share the greatest
    ``feature_ts``, the chosen one is the greatest in this total order: compare
    the feature columns (every column of ``features`` except ``keys``) in the
    column order of ``features``, each ascending with null smallest, as Spark
    sorts them (strings by their UTF-8 bytes, NaN above every other number;
    arrays and structs element by element). A string column with a collation
    other than ``UTF8_BINARY`` is compared by its UTF-8 bytes too (a collation
    may call different strings equal). A map compares as the list of its
    entries sorted by key, each entry by key then value. Variant and interval
    columns, which Spark cannot sort, compare by their JSON text (``to_json``,
    null fields written as ``null``, times to the microsecond), a null value
    still smallest. The result does not depend on partitioning or input order.
    (The only rows this order cannot tell apart differ solely in ``-0.0``
    versus ``0.0``.)

    Output columns: all columns of ``labels`` (same names, same order, same
    types) followed by all columns of ``features`` except ``keys``, in the
    column order of ``features``, named ``prefix + name`` (``feature_ts``
    included). All columns keep their types; all come back nullable (the
    union of both sides makes every column nullable).

    Example::

        >>> as_of_join(labels, features, keys=["user_key"], label_ts="ts",
        ...            feature_ts="feature_ts", prefix="f_")  # doctest: +SKIP

    Args:
        labels: One row per training example.
        features: The feature history; one row per key and time the values
            became known.
        keys: Columns present in both frames that identify the entity.
        label_ts: Timestamp column of ``labels``.
        feature_ts: Timestamp column of ``features``.
        ttl: Ignore feature rows older than ``label_ts - ttl``; None: no limit.
        prefix: Put before the name of every column taken from ``features``.
        time_buckets: Split every key's timeline into this many time buckets
            to spread heavily skewed keys over several tasks (see module
            docstring); None or 1: no bucketing.
        prefilter: Keep only the feature rows some label can match before
            the wide shuffle (see module docstring); None: when the feature
            columns are wide and the labels few enough, by Spark's plan
            estimate, to broadcast their keys and timestamps. Same result
            either way. The driver collects and broadcasts up to one (keys,
            timestamp) pair per label row: True with tens of millions of
            labels can run it out of memory.

    Returns:
        A lazy DataFrame; no Spark job runs until it is used. (With a wide
        feature table and ``prefilter=None``, sizing the labels makes Delta
        read a table's state, its list of files, if nothing has yet: work
        the query needs anyway.)

    Raises:
        MissingColumnsError: A key or timestamp column is missing.
        AsOfJoinError: A timestamp column is not a timestamp or date, a key
            has types of different kinds on the two sides (numbers of any
            width go together, also inside arrays and structs; nullability
            does not count), a key is of a map or variant type, or a side is
            a streaming DataFrame.
        ColumnClashError: An output column name occurs twice (set ``prefix``),
            or an input repeats a column name.
        ValueError: ``keys`` empty or repeated, ``ttl`` negative,
            ``time_buckets`` below 1, ``prefilter`` not a bool or None.
        TypeError: ``keys`` not column names, ``label_ts`` or ``feature_ts``
            not a name, ``prefix`` not a string, ``ttl`` not a timedelta.
    """
    keys = _check_arguments(keys, label_ts, feature_ts, ttl, prefix, time_buckets, prefilter)
    for side, df in (("labels", labels), ("features", features)):
        if df.isStreaming:
            raise AsOfJoinError(
                f"{side} is a streaming DataFrame; as_of_join joins batch DataFrames "
                "(join each micro-batch in foreachBatch)"
            )
    features, keys, label_ts, feature_ts = _own_names(labels, features, keys, label_ts, feature_ts)
    _check_types(labels, features, keys, label_ts, feature_ts)
    feature_columns = [c for c in features.columns if c not in keys]
    out_names = [f"{prefix or ''}{c}" for c in feature_columns]
    _check_clashes(labels, features, out_names, prefix, columns.case_sensitive(labels))

    if prefilter is None:
        payload = T.StructType([f for f in features.schema.fields if f.name not in keys])
        prefilter = (
            _estimated_bytes(payload) > WIDE_PAYLOAD_BYTES
            and _broadcastable(labels.select(*[columns.ref(c) for c in [*keys, label_ts]]))
        )
    if prefilter:
        features = _usable_features(labels, features, keys, label_ts, feature_ts)
    union = _tagged_union(labels, features, keys, label_ts, feature_ts)
    payload_type = union.schema[_PAYLOAD].dataType
    assert isinstance(payload_type, T.StructType)  # built by _tagged_union
    # Ties go to the greatest payload: the payload itself if Spark can sort it.
    tie_break = _sort_key(F.col(_PAYLOAD), payload_type)
    key_cols = [_key(i) for i in range(len(keys))]

    if time_buckets is not None and time_buckets > 1:
        union = _bucketed(union, key_cols, time_buckets, tie_break)
        partition = [*key_cols, _BUCKET]
    else:
        partition = key_cols

    latest = _newest_so_far(F.col(_PAYLOAD), partition, tie_break.asc_nulls_first())
    matched = union.withColumn(_MATCH, latest).where(F.col(_KIND) == _LABEL_KIND)

    found_ts = F.col(_MATCH).getField(feature_ts)
    in_range = F.col(_TS).isNotNull() & F.col(_MATCH).isNotNull()
    if ttl is not None and ttl <= _LONGEST_SPAN:
        # Counted in microseconds: ``ts - interval`` would add whole days on the
        # session time zone's calendar, 23 or 25 hours across a clock change.
        ts_type = union.schema[_TS].dataType
        label_micros = _monotone_micros(F.col(_TS), ts_type)
        found_micros = _monotone_micros(found_ts.cast(ts_type), ts_type)
        in_range = in_range & (found_micros >= label_micros - F.lit(columns.micros(ttl)))
    # Null the struct once, then unpack it: the check is not repeated per column.
    checked = matched.select(_LABEL, F.when(in_range, F.col(_MATCH)).alias(_MATCH))
    return checked.select(
        *[F.col(_LABEL).getField(c).alias(c) for c in labels.columns],
        *[
            F.col(_MATCH).getField(c).alias(name)
            for c, name in zip(feature_columns, out_names, strict=True)
        ],
    )


def _check_arguments(
    keys: Sequence[str],
    label_ts: str,
    feature_ts: str,
    ttl: timedelta | None,
    prefix: str | None,
    time_buckets: int | None,
    prefilter: bool | None,
) -> list[str]:
    try:
        given: list[object] = [keys] if isinstance(keys, str) else list(keys)
    except TypeError:
        given = [keys]  # not iterable: refused just below
    if not all(isinstance(k, str) for k in given):
        raise TypeError(f"keys must be a list of column names; got {keys!r}")
    key_list = [str(k) for k in given]
    if not key_list:
        raise ValueError("as_of_join needs at least one key column; got keys=[]")
    if len(set(key_list)) != len(key_list):
        raise ValueError(f"keys must not repeat a column; got {key_list}")
    for name, ts in (("label_ts", label_ts), ("feature_ts", feature_ts)):
        if not isinstance(ts, str):
            raise TypeError(f"{name} must be a column name; got {ts!r}")
        if ts in key_list:
            raise ValueError(f"{name}={ts!r} is also one of the keys {key_list}")
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string or None; got {prefix!r}")
    if ttl is not None:
        columns.require_timedelta("ttl", ttl)
    if time_buckets is not None and (
        isinstance(time_buckets, bool) or not isinstance(time_buckets, int) or time_buckets < 1
    ):
        raise ValueError(f"time_buckets must be a positive int or None; got {time_buckets!r}")
    if prefilter not in (None, True, False):
        raise ValueError(f"prefilter must be True, False or None; got {prefilter!r}")
    return key_list


def _own_names(
    labels: DataFrame, features: DataFrame, keys: list[str], label_ts: str, feature_ts: str
) -> tuple[DataFrame, list[str], str, str]:
    """``features``, ``keys``, ``label_ts`` and ``feature_ts`` as the inputs spell them.

    A feature key spelt in another case than its label key is renamed to the
    label's spelling, which the output keeps.
    """
    label_names = _resolve_columns("labels", labels, [*keys, label_ts], keys=keys, ts_arg="label_ts")
    feature_names = _resolve_columns(
        "features", features, [*keys, feature_ts], keys=keys, ts_arg="feature_ts"
    )
    own_keys, label_ts, feature_ts = label_names[:-1], label_names[-1], feature_names[-1]
    if len(set(own_keys)) != len(own_keys):
        raise ValueError(
            f"keys must not repeat a column; got {keys}, which name the columns {own_keys} "
            "of labels (names differing only in case)"
        )
    checks = (("label_ts", label_ts, own_keys), ("feature_ts", feature_ts, feature_names[:-1]))
    for ts_name, ts, side_keys in checks:
        if ts in side_keys:
            raise ValueError(f"{ts_name}={ts!r} is also one of the keys {side_keys}")
    renames = {f: k for f, k in zip(feature_names[:-1], own_keys, strict=True) if f != k}
    return (features.withColumnsRenamed(renames) if renames else features), own_keys, label_ts, feature_ts


def _resolve_columns(
    side: str, df: DataFrame, expected: list[str], *, keys: list[str], ts_arg: str
) -> list[str]:
    """Each expected name as ``df`` spells it (:func:`columns.resolve`)."""
    expecting = f"keys {keys} and {ts_arg}={expected[-1]!r}"
    return columns.resolve(df, expected, what=side, expecting=expecting, error=MissingColumnsError)


def _broadcastable(pairs: DataFrame) -> bool:
    """Whether Spark's plan sizes ``pairs`` small enough for the driver to collect and broadcast.

    That is at most ``PREFILTER_MAX_PAIR_BYTES`` and a sixteenth of the
    driver's heap: a file scan's estimate counts compressed bytes, and the
    collected rows take several times that.
    """
    size = _planned_bytes(pairs)
    return size is not None and size <= min(PREFILTER_MAX_PAIR_BYTES, _driver_heap(pairs) // 16)


def _driver_heap(df: DataFrame) -> int:
    """The driver JVM's maximum heap; under Spark Connect (no JVM here), that of a default driver."""
    default = 1024 * 1024 * 1024
    try:
        jvm = df.sparkSession.sparkContext._jvm
    except Exception:  # noqa: BLE001 - Connect has no sparkContext
        return default
    return default if jvm is None else int(jvm.java.lang.Runtime.getRuntime().maxMemory())


def _planned_bytes(df: DataFrame) -> int | None:
    """Spark's estimate of a frame's size from its analyzed plan; None when it has none.

    The analyzed plan, not the optimized one: optimizing a Delta scan runs
    data-skipping jobs, and ``as_of_join`` runs none until its result is used.
    A streaming frame, or one of Spark Connect (no JVM plan here), is unsized.
    """
    if df.isStreaming:
        return None
    try:
        size = df._jdf.queryExecution().analyzed().stats().sizeInBytes()
    except Exception:  # noqa: BLE001 - Connect's missing _jdf, py4j or analysis errors: no estimate
        return None
    return int(str(size))


def _check_types(
    labels: DataFrame, features: DataFrame, keys: list[str], label_ts: str, feature_ts: str
) -> None:
    """Times must be times, and each key of one kind on both sides.

    Spark would otherwise cast silently: a string ``label_ts`` parsed as a
    time, or string keys cast to numbers so that ``'1'`` matches ``1``.
    """
    for side, df, arg, name in (("labels", labels, "label_ts", label_ts),
                                ("features", features, "feature_ts", feature_ts)):
        columns.require_time(df, name, arg=arg, what=side, error=AsOfJoinError)
    for key in keys:
        left, right = labels.schema[key].dataType, features.schema[key].dataType
        for side, found in (("labels", left), ("features", right)):
            if not columns.equatable(found):
                raise AsOfJoinError(
                    f"key {key!r} is {found.simpleString()} in {side}; Spark cannot match keys "
                    "of a map or variant type: use other key columns"
                )
        # Nullability and the width of numbers are not part of a key's kind, also
        # inside arrays and structs: array(1, 2) matches array(1L, 2L), as in Spark's joins.
        if _kind(left) != _kind(right):
            raise AsOfJoinError(
                f"key {key!r} is {left.simpleString()} in labels but {right.simpleString()} "
                "in features; cast one side so that both have the same type"
            )


def _kind(data_type: T.DataType) -> T.DataType:
    """The type with every field and element nullable, and every number a double (no map: keys have none)."""
    if isinstance(data_type, T.StructType):
        return T.StructType([
            T.StructField(f.name, _kind(f.dataType), True) for f in data_type.fields
        ])
    if isinstance(data_type, T.ArrayType):
        return T.ArrayType(_kind(data_type.elementType), True)
    if isinstance(data_type, T.NumericType):
        return T.DoubleType()
    return data_type


def _check_clashes(
    labels: DataFrame, features: DataFrame, feature_names: list[str], prefix: str | None,
    case_sensitive: bool,
) -> None:
    def norm(name: str) -> str:
        return name if case_sensitive else name.lower()

    def repeats(names: list[str]) -> list[str]:
        seen: dict[str, str] = {}
        found: list[str] = []
        for name in names:
            if norm(name) in seen:
                found.append(name if seen[norm(name)] == name else f"{seen[norm(name)]}/{name}")
            else:
                seen[norm(name)] = name
        return found

    # No prefix can fix a name an input already repeats (a join's output, say).
    for side, df in (("labels", labels), ("features", features)):
        own = repeats(df.columns)
        if own:
            raise ColumnClashError(
                f"{side} has column(s) {own} more than once ({side} columns {df.columns}); "
                "rename or drop them before the join"
            )
    clashes = repeats([*labels.columns, *feature_names])
    if clashes:
        hint = "choose another prefix" if prefix else "pass prefix= to rename the feature columns"
        raise ColumnClashError(
            f"as_of_join output would repeat column(s) {clashes} "
            f"(labels columns {labels.columns}, feature columns {feature_names}); {hint}"
        )


def _key(i: int) -> str:
    return f"__pit_key{i}"


def _renamed_keys(keys: list[str]) -> list[Column]:
    return [columns.ref(k).alias(_key(i)) for i, k in enumerate(keys)]


def _packed(names: list[str]) -> Column:
    return F.struct(*[columns.ref(c) for c in names])


def _tagged_union(
    labels: DataFrame, features: DataFrame, keys: list[str], label_ts: str, feature_ts: str
) -> DataFrame:
    """Labels and feature rows in one frame: keys, ts, kind and one struct per side."""
    label_type = labels.select(_packed(labels.columns)).schema[0].dataType
    feature_columns = [c for c in features.columns if c not in keys]
    payload_type = features.select(_packed(feature_columns)).schema[0].dataType
    label_side = labels.select(
        *_renamed_keys(keys),
        columns.ref(label_ts).alias(_TS),
        F.lit(_LABEL_KIND).alias(_KIND),
        _packed(labels.columns).alias(_LABEL),
        F.lit(None).cast(payload_type).alias(_PAYLOAD),
    )
    usable = F.lit(True)
    for c in [*keys, feature_ts]:
        usable = usable & columns.ref(c).isNotNull()
    feature_side = features.where(usable).select(
        *_renamed_keys(keys),
        columns.ref(feature_ts).alias(_TS),
        F.lit(_FEATURE).alias(_KIND),
        F.lit(None).cast(label_type).alias(_LABEL),
        _packed(feature_columns).alias(_PAYLOAD),
    )
    return label_side.unionByName(feature_side)


def _estimated_bytes(data_type: T.DataType) -> int:
    """A rough row width: 8 per number or time, 20 per string (Spark's own guess), 100 per collection."""
    if isinstance(data_type, T.StructType):
        return sum(_estimated_bytes(f.dataType) for f in data_type.fields)
    if isinstance(data_type, T.StringType | T.BinaryType):
        return 20
    if isinstance(data_type, T.ArrayType | T.MapType | T.VariantType):
        return 100
    return 8


def _usable_features(
    labels: DataFrame, features: DataFrame, keys: list[str], label_ts: str, feature_ts: str
) -> DataFrame:
    """The feature rows whose ``(keys, feature_ts)`` is some label's match, ties included.

    The join's own union and window, on keys and timestamps only (Spark prunes
    the unused structs), give each label the timestamp of its match; the TTL
    is left to the join, so a few rows too old for their label may stay. The
    pairs go to every task as a broadcast, so the wide rows are filtered where
    they are read.
    """
    key_names = [_key(i) for i in range(len(keys))]
    narrow = _tagged_union(labels, features, keys, label_ts, feature_ts).select(
        *key_names, _TS, _KIND, F.when(F.col(_KIND) == _FEATURE, F.col(_TS)).alias(_FOUND)
    )
    # The pairs meet the user's feature columns in the join condition, where
    # a shared name would be ambiguous: they get names features does not use.
    pair_names = _unused_names([*key_names, _FOUND], features.columns)
    pairs = (
        narrow.withColumn(_FOUND, _newest_so_far(F.col(_FOUND), key_names))
        .where((F.col(_KIND) == _LABEL_KIND) & F.col(_FOUND).isNotNull())
        .select(*[F.col(c).alias(pair_names[c]) for c in [*key_names, _FOUND]])
        .distinct()
    )
    same = reduce(
        Column.__and__,
        [columns.ref(k) == columns.ref(pair_names[_key(i)]) for i, k in enumerate(keys)],
        columns.ref(feature_ts) == columns.ref(pair_names[_FOUND]),
    )
    return features.join(F.broadcast(pairs), same, "left_semi")


def _unused_names(names: list[str], taken: list[str]) -> dict[str, str]:
    """Each name, with underscores put before it until no column in ``taken`` has it in any case."""
    used = {name.lower() for name in taken}
    fresh = {}
    for name in names:
        candidate = name
        while candidate.lower() in used:
            candidate = "_" + candidate
        fresh[name] = candidate
        used.add(candidate.lower())
    return fresh


def _newest_so_far(value: Column, partition: list[str], *tie_break: Column) -> Column:
    """The last non-null ``value`` up to this row, in time order, features before labels."""
    window = (
        Window.partitionBy(*partition)
        .orderBy(F.col(_TS).asc_nulls_first(), F.col(_KIND).asc(), *tie_break)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    return F.last(value, ignorenulls=True).over(window)


def _sortable(data_type: T.DataType) -> bool:
    """Whether Spark sorts values of this type, and tells every two different values apart."""
    if isinstance(data_type, T.StringType):
        return _by_bytes(data_type)
    if isinstance(data_type, T.StructType):
        return all(_sortable(f.dataType) for f in data_type.fields)
    if isinstance(data_type, T.ArrayType):
        return _sortable(data_type.elementType)
    unsortable = (T.MapType, T.VariantType, T.CalendarIntervalType, T.UserDefinedType)
    return not isinstance(data_type, unsortable)


def _by_bytes(string_type: T.StringType) -> bool:
    # Under UTF8_LCASE or a locale's collation, "a" and "A" may sort as equal.
    return string_type.collation == "UTF8_BINARY"


def _sort_key(value: Column, data_type: T.DataType) -> Column:
    """A value Spark sorts, one for each value of ``data_type`` (but -0.0 and 0.0), null still null.

    A map becomes its entries sorted by key (keys are unique within a map). Its
    JSON text would not do: Spark writes a key that is not a string as the JVM
    object's text, which for binary is its address, so ties would go another way
    in every run, and which makes ``array('a,b')`` and ``array('a', 'b')`` alike.
    """
    if _sortable(data_type):
        return value
    if isinstance(data_type, T.StringType):
        return value.cast(T.BinaryType())
    if isinstance(data_type, T.StructType):
        fields = [
            _sort_key(value.getField(field.name), field.dataType).alias(f"f{i}")
            for i, field in enumerate(data_type.fields)
        ]
        return F.when(value.isNotNull(), F.struct(*fields))
    if isinstance(data_type, T.ArrayType):
        element = data_type.elementType
        return F.transform(value, lambda item: _sort_key(item, element))
    if isinstance(data_type, T.MapType):
        key_type, value_type = data_type.keyType, data_type.valueType
        entries = F.transform(
            F.map_entries(value),
            lambda entry: F.struct(
                _sort_key(entry.getField("key"), key_type).alias("k"),
                _sort_key(entry.getField("value"), value_type).alias("v"),
            ),
        )
        return F.array_sort(entries)
    # Variant, calendar interval, user-defined type: their JSON text, null fields
    # written, times to the microsecond; a null value stays null (its text would
    # sort last).
    text = F.to_json(F.struct(value.alias("v")), {"ignoreNullFields": "false", **_JSON_TIMES})
    return F.when(value.isNotNull(), text)


def _monotone_micros(ts: Column, kind: T.DataType) -> Column:
    """Microseconds that order as ``ts`` orders, whatever the session time zone.

    A TIMESTAMP_NTZ is a wall-clock time: cast to an instant in the session
    time zone, 02:30 on a spring-forward day would come after 03:00. Its
    date and time of day are counted as they read instead, and so are a
    date's (days of 86 400 s each).
    """
    if isinstance(kind, T.DateType):
        return _monotone_micros(ts.cast(T.TimestampNTZType()), T.TimestampNTZType())
    if not isinstance(kind, T.TimestampNTZType):
        return F.unix_micros(ts.cast(T.TimestampType()))
    seconds = F.date_part(F.lit("SECOND"), ts)  # with the fraction, to the microsecond
    return (
        F.unix_date(ts.cast(T.DateType())).cast("long") * F.lit(86_400_000_000)
        + F.hour(ts).cast("long") * F.lit(3_600_000_000)
        + F.minute(ts).cast("long") * F.lit(60_000_000)
        + (seconds * F.lit(1_000_000)).cast("long")
    )


def _bucketed(union: DataFrame, key_cols: list[str], buckets: int, tie_break: Column) -> DataFrame:
    """Add a time bucket to every row, plus one carried-forward feature row per bucket.

    Buckets are monotone in time, so every feature row of an earlier bucket is
    strictly older than every row of a later one. The carried row of bucket b
    is the newest feature row of all buckets before b (same tie-break), so a
    window per ``(keys, bucket)`` finds what a window per ``keys`` would.
    """
    micros = _monotone_micros(F.col(_TS), union.schema[_TS].dataType)
    bounds = union.agg(F.min(micros).alias(_LO), F.max(micros).alias(_HI))
    span = (F.col(_HI) - F.col(_LO) + F.lit(1)).cast("double")
    position = (micros - F.col(_LO)).cast("double") / span * F.lit(float(buckets))
    bucket = F.least(F.lit(buckets - 1), F.greatest(F.lit(0), F.floor(position).cast("int")))
    with_bucket = union.crossJoin(F.broadcast(bounds)).withColumn(_BUCKET, bucket).drop(_LO, _HI)

    # Newest feature row per (keys, bucket) by (ts, tie-break); the sort key
    # is separate from the payload because the payload may not be sortable.
    order = F.when(F.col(_KIND) == _FEATURE, F.struct(F.col(_TS).alias("t"), tie_break.alias("o")))
    per_bucket = with_bucket.groupBy(*key_cols, _BUCKET).agg(
        F.when(
            F.max(order).isNotNull(),
            F.struct(F.max(order).getField("t").alias("t"), F.max_by(_PAYLOAD, order).alias("p")),
        ).alias(_LAST)
    )
    before = (
        Window.partitionBy(*key_cols)
        .orderBy(F.col(_BUCKET).asc_nulls_first())
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    carried = (
        per_bucket.withColumn(_CARRIED, F.last(F.col(_LAST), ignorenulls=True).over(before))
        .where(F.col(_CARRIED).isNotNull() & F.col(_BUCKET).isNotNull())
        .select(
            *key_cols,
            F.col(_CARRIED).getField("t").alias(_TS),
            F.lit(_FEATURE).alias(_KIND),
            F.lit(None).cast(union.schema[_LABEL].dataType).alias(_LABEL),
            F.col(_CARRIED).getField("p").alias(_PAYLOAD),
            _BUCKET,
        )
    )
    return with_bucket.unionByName(carried)
