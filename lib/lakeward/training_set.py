"""Training sets: churn labels, point-in-time features and a leakage-checked split.

``lakeward training-set`` builds ``ml.training_set``: one row per labelled
order (:func:`lakeward.labels.churn_labels`), the newest ``gold.user_features``
row known at the order's time (:func:`lakeward.pit.as_of_join`), and a
``split`` column (:mod:`lakeward.splits`). Every input is read at a pinned
Delta version; the versions, with every other setting that shapes the rows,
make a :class:`BuildSpec`, stored in the table's properties and in the
``ops.training_sets`` ledger, so the exact rows can be rebuilt later::

    result = build(spark, settings)                   # ml.training_set, one commit
    again = rebuild(spark, settings, result.spec)     # same inputs, same versions
    assert content_hash(again) == result.content_hash

The build fails, writing nothing, when there are no labels, when a part of a
temporal split is empty, when a joined ``feature_ts`` is later than its
``label_ts``, or when :func:`lakeward.splits.leakage` reports a leak.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, timedelta
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import columns, gold, silver, tables
from lakeward.config import Settings, is_identifier
from lakeward.labels import churn_labels, fully_observed
from lakeward.pit import as_of_join
from lakeward.splits import PARTS, SPLIT, check_bounds, check_fractions, group_split, leakage, temporal_split

__all__ = [
    "CONTENT_HASH_PROPERTY",
    "SPEC_PROPERTY",
    "BuildSpec",
    "TrainingSetError",
    "TrainingSetResult",
    "assemble",
    "assert_point_in_time",
    "build",
    "content_hash",
    "feature_columns",
    "last_unbroken_day",
    "ledger_spec",
    "rebuild",
    "spec_feature_columns",
    "stored_spec",
    "table_name",
    "temporal_bounds",
    "training_set_spec",
]

log = logging.getLogger(__name__)

ORDERS_SOURCE = next(name for name, spec in silver.SOURCES.items() if spec.table == "silver_orders")
"""The bronze source of ``silver.orders``, as silver's ledger names it."""

SPEC_PROPERTY = "lakeward.training_set.spec"
CONTENT_HASH_PROPERTY = "lakeward.training_set.content_hash"
SPLITS = ("group", "temporal")
KEY = "user_key"

_ORDER_COLUMNS = ("event_id", "user_key", "event_ts")
_LABEL_FIELDS = (
    T.StructField("label_id", T.StringType()),
    T.StructField("user_key", T.StringType()),
    T.StructField("label_ts", T.TimestampType()),
    T.StructField("churned", T.IntegerType()),
)

LEDGER_SCHEMA = T.StructType(
    [
        T.StructField("build_id", T.StringType()),
        T.StructField("name", T.StringType()),
        T.StructField("table_version", T.LongType()),
        T.StructField("input_table", T.StringType()),
        T.StructField("input_version", T.LongType()),
        T.StructField("rows", T.LongType()),
        T.StructField("content_hash", T.StringType()),
        T.StructField("spec_json", T.StringType()),
        T.StructField("built_at", T.TimestampType()),
    ]
)


class TrainingSetError(RuntimeError):
    """A training set that cannot be built or rebuilt as asked; the message says why."""


@dataclass(frozen=True)
class BuildSpec:
    """Everything needed to rebuild a training set exactly.

    Datetimes are timezone-aware UTC: naive values (and dates, taken as UTC
    midnight) are converted on construction, so a spec equals its JSON round
    trip::

        spec = BuildSpec.from_json(result.spec.to_json())
        assert spec == result.spec
    """

    inputs: dict[str, int]
    """Input table name as configured (``silver.orders``) -> the Delta version read."""
    horizon_days: int
    ttl_days: int | None
    split: str
    """``group`` or ``temporal``."""
    fractions: tuple[float, float, float]
    """Train, validation, test shares: of the users (group split), or of the label time
    range left after the two gaps (temporal split without ``t1``/``t2``)."""
    seed: int
    t1: datetime | None
    """Temporal split bounds as resolved; never None after a temporal build."""
    t2: datetime | None
    observed_until: datetime
    """Exclusive end of what the orders read observe: the end of their last unbroken
    arrival day, less the allowed lateness, and no later than the feature history; a label
    window must end before it (``labels.fully_observed``)."""
    feature_version: str
    feature_columns: tuple[str, ...] | None = None
    """The feature columns read, in order; None in a spec written before lakeward recorded
    them, which reads the configured ones."""
    input_ids: dict[str, str] | None = None
    """Input table name -> Delta's table id when it was read; None in a spec written before
    lakeward recorded them. A table dropped and created again has another id, and its
    versions are not the ones read."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise TrainingSetError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.horizon_days <= 0:
            raise TrainingSetError(f"horizon_days must be positive, got {self.horizon_days}")
        if self.ttl_days is not None and self.ttl_days < 0:
            raise TrainingSetError(f"ttl_days must not be negative, got {self.ttl_days}")
        try:
            check_fractions(self.fractions)
        except ValueError as err:
            raise TrainingSetError(str(err)) from None
        shares = tuple(float(share) for share in self.fractions)
        t1, t2 = (None if t is None else columns.utc(t) for t in (self.t1, self.t2))
        if self.split == "temporal" and (t1 is None or t2 is None):
            raise TrainingSetError("a temporal split needs both t1 and t2")
        if t1 is not None and t2 is not None and not t1 < t2:
            raise TrainingSetError(f"expected t1 < t2, got {t1} and {t2}")
        # Frozen: normalized values go in through object.__setattr__.
        object.__setattr__(self, "inputs", {str(k): int(v) for k, v in self.inputs.items()})
        object.__setattr__(self, "fractions", shares)
        object.__setattr__(self, "t1", t1)
        object.__setattr__(self, "t2", t2)
        object.__setattr__(self, "observed_until", columns.utc(self.observed_until))
        names = self.feature_columns
        if names is not None:
            if isinstance(names, str) or not all(isinstance(c, str) for c in names):
                raise TrainingSetError(f"feature_columns must be a list of names, got {names!r}")
            object.__setattr__(self, "feature_columns", tuple(names))
        if self.input_ids is not None:
            if not isinstance(self.input_ids, dict):
                raise TrainingSetError(f"input_ids must map table names to ids, got {self.input_ids!r}")
            object.__setattr__(self, "input_ids", {str(k): str(v) for k, v in self.input_ids.items()})

    @property
    def horizon(self) -> timedelta:
        """The label window, which is also the gap between temporal parts."""
        return timedelta(days=self.horizon_days)

    @property
    def ttl(self) -> timedelta | None:
        """Oldest feature row the as-of join takes, or None for no limit."""
        return None if self.ttl_days is None else timedelta(days=self.ttl_days)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, ISO datetimes): equal specs give equal text."""
        data = asdict(self)
        for key in ("t1", "t2", "observed_until"):
            data[key] = None if data[key] is None else data[key].isoformat()
        data["fractions"] = list(self.fractions)
        if self.feature_columns is not None:
            data["feature_columns"] = list(self.feature_columns)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BuildSpec:
        """Parse :meth:`to_json` output; any other shape raises :class:`TrainingSetError`."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as err:
            raise TrainingSetError(f"a training set spec must be JSON: {err}") from None
        expected = {f.name for f in fields(cls)}
        # Specs written before a key was added lack it; the key's default stands for it.
        required = expected - _ADDED_SPEC_KEYS
        if not isinstance(data, dict) or not required <= set(data) <= expected:
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            # Unknown keys are refused too: a spec from a newer lakeward may mean
            # rows this version cannot reproduce.
            raise TrainingSetError(f"a training set spec has keys {sorted(expected)}, found {found}")
        try:
            for key in ("t1", "t2", "observed_until"):
                if data[key] is not None:
                    data[key] = datetime.fromisoformat(data[key])
            data["fractions"] = tuple(data["fractions"])
            return cls(**data)
        except (TypeError, ValueError, AttributeError) as err:
            raise TrainingSetError(f"not a valid training set spec: {err}") from None


_ADDED_SPEC_KEYS = frozenset({"feature_columns", "input_ids"})


@dataclass(frozen=True)
class TrainingSetResult:
    """What :func:`build` wrote."""

    table: str
    """The table written, e.g. ``ml.training_set``."""
    version: int
    """Its Delta version after the write."""
    rows: int
    content_hash: str
    spec: BuildSpec
    split_rows: dict[str, int] = field(default_factory=dict)
    """Rows per split part, every part listed."""
    build_id: str = ""
    """The build's id in the ``ops.training_sets`` ledger."""


# --- names and schemas -----------------------------------------------------------------


def feature_columns(settings: Settings) -> list[str]:
    """The numeric model feature columns of the training set, in table order."""
    return [f.name for f in gold.feature_columns(settings.pipeline.feature_windows_days)]


# Catalogs and file systems limit names (Hive's metastore and most file systems to 128 to 255).
MAX_NAME_LENGTH = 128


def table_name(settings: Settings, name: str | None = None) -> str:
    """``ml.training_set``, or ``ml.<name>`` (the schema of ``ml_training_set``) for a plain identifier.

    The name is lower-cased, as the catalog keeps it, so that one table has one name in
    the ledger. It may not be longer than :data:`MAX_NAME_LENGTH`, nor name another
    table of lakeward's own (``predictions``, say), which ``--name`` would replace.
    """
    default = settings.table("ml_training_set")
    if name is None:
        return default
    if not is_identifier(name):
        raise TrainingSetError(
            f"a training set name is a plain identifier (letters, digits, _), got {name!r}"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise TrainingSetError(
            f"a training set name has at most {MAX_NAME_LENGTH} characters, got {len(name)}"
        )
    schema = default.rsplit(".", 1)[0] if "." in default else None
    table = f"{schema}.{name.lower()}" if schema else name.lower()
    own = {settings.table(logical) for logical in settings.tables if logical != "ml_training_set"}
    if table in own:
        raise TrainingSetError(f"{table} is one of lakeward's own tables; choose another training set name")
    return table


def training_set_spec(settings: Settings, name: str | None = None) -> tables.TableSpec:
    """The training set table: labels, the feature row joined to each, and ``split``."""
    schema = T.StructType(
        [
            *_LABEL_FIELDS,
            T.StructField("feature_date", T.DateType()),
            T.StructField("feature_ts", T.TimestampType()),
            *gold.feature_columns(settings.pipeline.feature_windows_days),
            T.StructField("feature_version", T.StringType()),
            T.StructField(SPLIT, T.StringType()),
        ]
    )
    return tables.TableSpec(table_name(settings, name), schema, subject_column=KEY)


def ledger_spec(settings: Settings) -> tables.TableSpec:
    """``ops.training_sets``: one row per build and input table, with the version read."""
    return tables.TableSpec(settings.table("ops_training_sets"), LEDGER_SCHEMA)


# --- pure transforms -------------------------------------------------------------------


def assemble(orders: DataFrame, features: DataFrame, spec: BuildSpec) -> DataFrame:
    """Labels, the feature row known at each label's time, and the split. No I/O.

    ``orders`` needs ``event_id``, ``user_key`` and ``event_ts``; ``features``
    needs ``user_key``, ``feature_ts`` and ``feature_version`` (only rows of
    ``spec.feature_version`` are used). The result has ``label_id``,
    ``user_key``, ``label_ts``, ``churned``, then every other column of
    ``features`` in its order (null when no feature row is within the TTL),
    then ``split``. Orders whose window does not end before
    ``spec.observed_until`` get no label; a temporal split also drops labels whose window would reach the
    next part::

        training = assemble(orders, gold_features, spec)
    """
    # As Spark resolves names: regardless of case unless spark.sql.caseSensitive is on.
    columns.resolve(orders, _ORDER_COLUMNS, what="orders", error=TrainingSetError)
    columns.resolve(features, (KEY, "feature_ts", "feature_version"), what="features", error=TrainingSetError)
    labels = churn_labels(orders, horizon=spec.horizon, observed_until=spec.observed_until)
    current = features.filter(F.col("feature_version") == F.lit(spec.feature_version))
    joined = as_of_join(
        labels, current, keys=[KEY], label_ts="label_ts", feature_ts="feature_ts", ttl=spec.ttl
    )
    if spec.split == "temporal":
        assert spec.t1 is not None and spec.t2 is not None  # BuildSpec guarantees it
        return temporal_split(joined, ts="label_ts", t1=spec.t1, t2=spec.t2, gap=spec.horizon)
    return group_split(joined, key=KEY, fractions=spec.fractions, seed=spec.seed)


def temporal_bounds(
    first: datetime, last: datetime, *, horizon: timedelta, fractions: Sequence[float]
) -> tuple[datetime, datetime]:
    """``(t1, t2)`` for labels from ``first`` to ``last``, with a gap of ``horizon`` before each.

    The range minus the two gaps is cut in the proportions of ``fractions``;
    with shares above 0, train holds ``first`` and test holds ``last``. Raises
    :class:`TrainingSetError` when the range is not longer than two gaps::

        t1, t2 = temporal_bounds(first, last, horizon=timedelta(days=30), fractions=(0.7, 0.15, 0.15))
    """
    first, last = columns.utc(first), columns.utc(last)
    usable = last - first - 2 * horizon
    if usable <= timedelta(0):
        raise TrainingSetError(
            f"labels run from {first} to {last} ({(last - first).days} days); a temporal split "
            f"needs more than {2 * horizon.days} days for three parts separated by gaps of "
            f"{horizon.days} days, whether t1 and t2 are computed or given. Use the group split, "
            f"or add data"
        )
    t1 = first + usable * fractions[0] + horizon
    t2 = t1 + usable * fractions[1] + horizon
    # Whole seconds read better in the spec; the build checks every part is non-empty.
    t1, t2 = t1.replace(microsecond=0), t2.replace(microsecond=0)
    if t2 - t1 <= horizon:
        raise TrainingSetError(
            f"the validation share {fractions[1]} (training_set.fractions) leaves validation no "
            f"time between t1 and t2 once the {horizon.days}-day gap is taken: give it a share "
            "above 0, or give t1 and t2"
        )
    return t1, t2


def content_hash(df: DataFrame) -> str:
    """Hex digest of the rows and columns of ``df``, independent of row order.

    One aggregate over two 64-bit hashes per row (count, sums and an xor), so
    no row is collected. Column names and types are part of the digest, and
    each value is hashed with a null marker, so ``(null, "a")`` and
    ``("a", null)`` differ::

        assert content_hash(df) == content_hash(df.orderBy(F.rand()))
    """
    values: list[Column] = []
    for name in df.columns:
        column = columns.ref(name)
        values += [column, column.isNull()]
    # Two salts, two independent hashes; a salt also makes a frame without columns hashable.
    first = F.xxhash64(F.lit("lakeward.content_hash.1"), *values)
    second = F.xxhash64(F.lit("lakeward.content_hash.2"), *values)
    # Sums as decimals: a sum of 64-bit hashes overflows a long, an error under ANSI.
    wide = T.DecimalType(20, 0)
    row = df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(first.cast(wide)).alias("sum1"),
        F.sum(second.cast(wide)).alias("sum2"),
        F.bit_xor(second).alias("xor2"),
    ).first()
    assert row is not None  # a global aggregate returns one row
    parts = [df.schema.simpleString(), row["rows"], str(row["sum1"]), str(row["sum2"]), row["xor2"]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def assert_point_in_time(training: DataFrame) -> None:
    """Raise :class:`TrainingSetError` if any row's ``feature_ts`` is later than its ``label_ts``."""
    future = training.filter(F.col("feature_ts") > F.col("label_ts"))
    example = future.select("label_id", "label_ts", "feature_ts").first()
    if example is not None:
        raise TrainingSetError(
            f"{future.count()} training row(s) have feature_ts later than label_ts, e.g. label "
            f"{example['label_id']} at {example['label_ts']} with feature_ts {example['feature_ts']}: "
            "the features would leak the future"
        )


# --- build, rebuild --------------------------------------------------------------------


def build(
    spark: SparkSession,
    settings: Settings,
    *,
    name: str | None = None,
    split: str | None = None,
    t1: datetime | date | None = None,
    t2: datetime | date | None = None,
) -> TrainingSetResult:
    """Build ``ml.training_set`` (or ``ml.<name>``) and record it in ``ops.training_sets``.

    ``split``, ``t1`` and ``t2`` override ``settings.training_set``. Each input
    is read at its current Delta version, pinned first, so the versions
    recorded are exactly those read. Nothing is written when a feature row
    from after its label's time was joined, a split part leaks into another,
    or there are no labels (or, for a temporal split, an empty part)::

        result = build(spark, settings, split="temporal")
        result.spec.inputs        # {"silver.orders": 12, "gold.user_features": 4}
    """
    config = settings.training_set
    table = table_name(settings, name)
    split = split or config.split
    if split not in SPLITS:
        raise TrainingSetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "group" and (t1 is not None or t2 is not None):
        raise TrainingSetError("t1 and t2 apply to the temporal split only")
    if t1 is None and t2 is None and split == "temporal":
        t1, t2 = config.t1, config.t2
    if (t1 is None) != (t2 is None):
        raise TrainingSetError("give both t1 and t2, or neither to compute them from the labels")
    if t1 is not None and t2 is not None:
        try:
            check_bounds(t1, t2, timedelta(days=config.horizon_days))
        except (TypeError, ValueError) as err:
            raise TrainingSetError(f"the temporal split cannot use t1={t1}, t2={t2}: {err}") from None

    refuse_foreign_table(spark, table)
    orders_name = settings.table("silver_orders")
    features_name = settings.table("gold_user_features")
    # Before the orders are pinned: silver records a day in its ledger after writing its
    # orders, so every day read here is in the pinned version, even while silver runs.
    processed = silver.processed_days(spark, settings, ORDERS_SOURCE)
    versions = {orders_name: _pinned_version(spark, orders_name),
                features_name: _pinned_version(spark, features_name)}
    input_ids = {name: tables.table_id(spark, name) for name in versions}
    orders = tables.read(spark, orders_name, version=versions[orders_name])
    wanted = feature_columns(settings)
    features = _feature_history(
        tables.read(spark, features_name, version=versions[features_name]), wanted, features_name
    )
    observed_until = _observed_until(
        orders, orders_name, versions[orders_name], settings.pipeline.allowed_lateness_days, processed
    )
    horizon = timedelta(days=config.horizon_days)
    features_until = _last_feature_day(features, features_name, versions[features_name], settings)
    observed_until = _labelled_by_features(observed_until, features_until, horizon, features_name)
    if split == "temporal" and t1 is None:
        first, last = _label_range(orders, horizon, observed_until, orders_name)
        t1, t2 = temporal_bounds(first, last, horizon=horizon, fractions=config.fractions)
    spec = BuildSpec(
        inputs=versions,
        horizon_days=config.horizon_days,
        ttl_days=config.ttl_days,
        split=split,
        fractions=config.fractions,
        seed=config.seed,
        t1=None if t1 is None else columns.utc(t1),
        t2=None if t2 is None else columns.utc(t2),
        observed_until=observed_until,
        feature_version=settings.pipeline.feature_version,
        feature_columns=tuple(wanted),
        input_ids=input_ids,
    )

    table_spec = training_set_spec(settings, name)
    training = assemble(orders.select(*_ORDER_COLUMNS), features, spec).select(
        *table_spec.schema.fieldNames()
    )
    # Checked, hashed and written: computed once, not once per action.
    training = training.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        split_rows = _verify(training, spec, orders_name)
        digest = content_hash(training)
        tables.replace(
            training, table_spec, {SPEC_PROPERTY: spec.to_json(), CONTENT_HASH_PROPERTY: digest}
        )
    finally:
        training.unpersist()
    version = tables.current_version(spark, table)
    rows = sum(split_rows.values())
    build_id = uuid.uuid4().hex
    _record(spark, settings, build_id, table, version, rows, digest, spec)
    log.debug(
        "training-set: %s version %d, %d rows (%s); inputs %s",
        table, version, rows, ", ".join(f"{p} {n}" for p, n in split_rows.items()),
        tables.describe_versions(spec.inputs),
    )
    return TrainingSetResult(table, version, rows, digest, spec, split_rows, build_id)


def rebuild(spark: SparkSession, settings: Settings, spec: BuildSpec) -> DataFrame:
    """The training set ``spec`` describes, from its inputs at the recorded Delta versions.

    Raises :class:`TrainingSetError` naming the table and version when a
    version cannot be read: beyond the latest, no longer in the log, or with
    data files removed (``VACUUM``)::

        spec = stored_spec(spark, settings)
        assert content_hash(rebuild(spark, settings, spec)) == original_hash
    """
    orders_name = settings.table("silver_orders")
    features_name = settings.table("gold_user_features")
    # Every recorded input first, orders then features: a version gone is the answer,
    # whatever the config says now.
    order = [orders_name, features_name, *sorted(spec.inputs)]
    inputs = {name: _read_version(spark, name, spec.inputs[name], spec.input_ids)
              for name in dict.fromkeys(order) if name in spec.inputs}
    missing = [n for n in (orders_name, features_name) if n not in spec.inputs]
    if missing:
        raise TrainingSetError(
            f"the spec records inputs {sorted(spec.inputs)}, not the configured table(s) {missing}"
        )
    orders, features = inputs[orders_name], inputs[features_name]
    wanted = spec_feature_columns(spec, settings)
    return assemble(orders.select(*_ORDER_COLUMNS), _feature_history(features, wanted, features_name), spec)


def spec_feature_columns(spec: BuildSpec, settings: Settings) -> list[str]:
    """The feature columns ``spec``'s build read; the configured ones for a spec that does not say."""
    return feature_columns(settings) if spec.feature_columns is None else list(spec.feature_columns)


def stored_spec(
    spark: SparkSession, settings: Settings, *, name: str | None = None, version: int | None = None
) -> BuildSpec:
    """The spec of a training set table: its current one, or the build that wrote ``version``.

    The current spec comes from the table's properties, an earlier one from
    the ``ops.training_sets`` ledger::

        rows = rebuild(spark, settings, stored_spec(spark, settings, version=3))
    """
    table = table_name(settings, name)
    if version is None:
        if not tables.exists(spark, table):
            raise TrainingSetError(f"{table} does not exist; run `lakeward training-set` first")
        text = tables.properties(spark, table).get(SPEC_PROPERTY)
        if text is None:
            raise TrainingSetError(f"{table} has no {SPEC_PROPERTY} property: not a training set")
        return BuildSpec.from_json(text)
    ledger = settings.table("ops_training_sets")
    row = None
    if tables.exists(spark, ledger):
        # A table dropped and built again starts its versions over: the latest
        # build of a version is the current table's.
        row = (
            tables.read(spark, ledger)
            .filter((F.col("name") == F.lit(table)) & (F.col("table_version") == F.lit(version)))
            .orderBy(F.col("built_at").desc())
            .select("spec_json")
            .first()
        )
    if row is None:
        raise TrainingSetError(f"{ledger} records no build of {table} version {version}")
    return BuildSpec.from_json(row["spec_json"])


# --- helpers ---------------------------------------------------------------------------


def _pinned_version(spark: SparkSession, name: str) -> int:
    if not tables.exists(spark, name):
        raise TrainingSetError(
            f"{name} does not exist; run the pipeline first (lakeward run all --all-dates)"
        )
    return tables.current_version(spark, name)


def _feature_history(features: DataFrame, columns: Sequence[str], name: str) -> DataFrame:
    """The feature table's key, dates, version and the feature ``columns``."""
    wanted = [KEY, "feature_date", "feature_ts", *columns, "feature_version"]
    missing = [c for c in wanted if c not in features.columns]
    if missing:
        raise TrainingSetError(
            f"{name} lacks column(s) {missing} that the configured features need; "
            "run the gold stage again with the current configuration"
        )
    return features.select(*wanted)


def _observed_until(
    orders: DataFrame, name: str, version: int, lateness_days: int, processed: Sequence[date]
) -> datetime:
    """The end of the last arrival day, less the allowed lateness.

    An order may still arrive up to ``lateness_days`` after it happened, so
    only a window that ends that long before the last arrival is complete:
    a later one could call a user churned whose next order is still in transit.
    When silver's ledger records the orders' arrival days (``processed``), the
    last arrival day is the last before the first day missing among them: the
    orders of a day whose file has not been processed yet are not observed,
    whatever came after it. A day processed without any order counts.
    """
    row = orders.agg(F.max("_arrival_date").alias("last")).first()
    last = None if row is None else row["last"]
    if last is None:
        raise TrainingSetError(
            f"{name} (version {version}) has no orders; run the pipeline first "
            "(lakeward run all --all-dates)"
        )
    if processed:
        last, missing = last_unbroken_day(processed)
        if missing is not None:
            log.warning(
                "training-set: silver has not processed the %s arrival day %s (its ledger goes on "
                "to %s); labels end before it. Run lakeward run all --date %s once its file has landed",
                ORDERS_SOURCE, missing, processed[-1], missing,
            )
    return columns.utc(last + timedelta(days=1) - timedelta(days=lateness_days))


def last_unbroken_day(days: Sequence[date]) -> tuple[date, date | None]:
    """The last of ``days`` before the first day missing after the earliest, and that day (or None).

    ``last_unbroken_day([d1, d2, d4])`` is ``(d2, d3)``; order and repeats do not matter.
    """
    ordered = sorted(set(days))
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after - before > timedelta(days=1):
            return before, before + timedelta(days=1)
    return ordered[-1], None


def _last_feature_day(features: DataFrame, name: str, version: int, settings: Settings) -> date:
    """The last ``feature_date`` of the configured feature version: gold's as-of day."""
    wanted = settings.pipeline.feature_version
    row = features.filter(F.col("feature_version") == F.lit(wanted)).agg(F.max("feature_date")).first()
    last: date | None = None if row is None else row[0]
    if last is not None:
        return last
    found = [r[0] for r in features.select("feature_version").distinct().limit(5).collect()]
    if not found:
        raise TrainingSetError(
            f"{name} (version {version}) is empty; run the pipeline first (lakeward run all --all-dates)"
        )
    raise TrainingSetError(
        f"{name} (version {version}) has no rows of feature_version {wanted!r} (found {found}); "
        "run the gold stage again with the current configuration"
    )


def _labelled_by_features(
    observed_until: datetime, last_feature_day: date, horizon: timedelta, name: str
) -> datetime:
    """``observed_until``, moved back so that no label comes after what the features know.

    A label at time t takes the feature row of the day before t's day (a
    day's row is known at its end), so features that run to day D serve the
    labels up to the end of D + 1; a later label would take D's row, or no
    row past the TTL, as if nothing had happened since. The labels end there
    when silver's orders run further than gold (gold not run since).
    """
    features_end = columns.utc(last_feature_day + timedelta(days=2)) + horizon
    if features_end >= observed_until:
        return observed_until
    log.warning(
        "training-set: %s runs to %s, while silver's orders run further; labels end with %s. "
        "Run lakeward run gold to bring the features up to date",
        name, last_feature_day, last_feature_day + timedelta(days=1),
    )
    return features_end


def _label_range(
    orders: DataFrame, horizon: timedelta, observed_until: datetime, name: str
) -> tuple[datetime, datetime]:
    # The same rows churn_labels keeps, without its window: only the range is needed.
    labelled = orders.filter(
        F.col("user_key").isNotNull()
        & F.col("event_ts").isNotNull()
        & fully_observed(horizon, observed_until)
    )
    micros = F.unix_micros(F.col("event_ts"))
    row = labelled.agg(F.min(micros).alias("first"), F.max(micros).alias("last")).first()
    if row is None or row["first"] is None:
        raise TrainingSetError(_no_labels(name, horizon, observed_until))
    return columns.from_micros(row["first"]), columns.from_micros(row["last"])


def _no_labels(name: str, horizon: timedelta, observed_until: datetime) -> str:
    return (
        f"no order in {name} has a fully observed {horizon.days}-day churn window "
        f"(data observed until {observed_until}): the training set would be empty"
    )


def _verify(training: DataFrame, spec: BuildSpec, orders_name: str) -> dict[str, int]:
    """Rows per part, after the point-in-time, emptiness and leakage checks."""
    assert_point_in_time(training)
    counted = {r[SPLIT]: r["count"] for r in training.groupBy(SPLIT).count().collect()}
    split_rows = {part: int(counted.get(part, 0)) for part in PARTS}
    if not any(split_rows.values()):
        raise TrainingSetError(_no_labels(orders_name, spec.horizon, spec.observed_until))
    empty = [p for p in PARTS if not split_rows[p]]
    if spec.split == "temporal" and empty:
        raise TrainingSetError(
            f"the temporal split t1={spec.t1}, t2={spec.t2} leaves {', '.join(empty)} empty "
            f"(rows per part: {split_rows}); choose other bounds"
        )
    for part, share in zip(PARTS, spec.fractions, strict=True):
        if share > 0 and not split_rows[part]:
            log.warning("training-set: split part %s is empty (too few users?)", part)
    if spec.split == "group" and spec.fractions[0] == 0:
        log.warning("training-set: the fractions give train no share: `lakeward train` cannot use this set")
    if spec.split == "temporal":
        problems = leakage(training, ts="label_ts", horizon=spec.horizon, t1=spec.t1, t2=spec.t2)
    else:
        problems = leakage(training, key=KEY)
    if problems:
        raise TrainingSetError("leakage between split parts: " + "; ".join(problems))
    return split_rows


def refuse_foreign_table(spark: SparkSession, table: str) -> None:
    """Refuse to replace ``table`` when it exists and is not a training set (predictions, say)."""
    if tables.exists(spark, table) and SPEC_PROPERTY not in _properties_or_empty(spark, table):
        raise TrainingSetError(
            f"{table} exists and is not a training set (it has no {SPEC_PROPERTY} property: a table of "
            f"another kind, or one replaced outside lakeward); choose another name, or drop it "
            f"(DROP TABLE {table}) if nothing needs it"
        )


def _properties_or_empty(spark: SparkSession, table: str) -> dict[str, str]:
    try:
        return tables.properties(spark, table)
    except Exception:  # noqa: BLE001 - not a Delta table: no training set properties
        return {}


def _read_version(spark: SparkSession, name: str, version: int, ids: dict[str, str] | None) -> DataFrame:
    """``name`` at ``version``, if it is still the table the build read (same Delta id in ``ids``)."""
    try:
        return tables.read_version(spark, name, version, expected_id=(ids or {}).get(name))
    except tables.VersionGoneError as err:
        raise TrainingSetError(str(err)) from None


def _record(
    spark: SparkSession,
    settings: Settings,
    build_id: str,
    table: str,
    version: int,
    rows: int,
    digest: str,
    spec: BuildSpec,
) -> None:
    ledger = ledger_spec(settings)
    tables.ensure_table(spark, ledger)
    built_at = tables.utc_now()
    spec_json = spec.to_json()
    records: list[tuple[Any, ...]] = [
        (build_id, table, version, input_table, input_version, rows, digest, spec_json, built_at)
        for input_table, input_version in spec.inputs.items()
    ]
    tables.append(spark.createDataFrame(records, LEDGER_SCHEMA), ledger.name)
