"""Incremental maintenance of the gold tables from silver's change data feed.

``refresh`` brings ``gold.user_daily`` and ``gold.user_features`` up to date
with silver. It reads only the silver rows inserted since the versions
recorded by the previous run in ``ops.gold_runs``, and replaces the gold rows
they change: whole event dates of ``user_daily``, and the new days of
``user_features`` (a MERGE when arrival days came out of order). Then it
records the silver versions it read and the version it left each gold table at::

    result = refresh(spark, settings)              # incremental when possible
    result = refresh(spark, settings, full=True)   # recompute from silver

What an increment recomputes:

- ``user_daily``: the (user, event date) groups that received new events,
  aggregated again from silver, so late events update the past days they
  belong to.
- ``user_features``: for each user with new events, the rows from the first
  day those events became known, continued from the user's row of the day
  before (see :func:`lakeward.gold.user_features`). Also, every user's rows
  for the days between the previous run's ``as_of`` and the new one.

The feature rows run up to ``as_of``: the last arrival day of an event
source that silver has processed, in ``ops.silver_batches``, also when silver
kept no event of that day. Both tables equal a full recompute on the same
silver versions, whatever order the arrival days came in. A run that finds no
new silver version and no newly processed arrival day changes nothing.
It falls back to a full recompute when there is no previous run, when the
feature definition changed, when a commit that is no gold run's changed a
gold table's rows since the last run (see :func:`_changed_outside`), or
when the change feed cannot be read or holds
anything other than inserts and updates that keep an event's user and date
and make it known no later (see :func:`_updates_fit_an_increment`). Silver
inserts, and updates a row only when an arrival day runs after a later one
and moves an event's arrival back; anything else comes from outside the
pipeline, an erasure for example.

The ledger row is written last. A run that dies before it leaves gold rows
that the next run computes again, from the same state, to the same values.
Every write of a gold run to its two tables names the run in the commit's
``userMetadata`` (``lakeward gold run <run_id>``), so the next run can tell
from the latest commit of ``user_features`` whether a run wrote after the
last one recorded; only then does it look for rows of its new days before it
appends.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import partial, reduce
from typing import TypeVar

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import delta_log, error_text, gold, interrupt, session, silver, tables
from lakeward.config import Settings

log = logging.getLogger(__name__)
Result = TypeVar("Result")

SILVER_EVENTS = ("silver_orders", "silver_deliveries", "silver_ratings")
# Their sources, as the silver ledger names them.
EVENT_SOURCES = tuple(source for source, spec in silver.SOURCES.items() if spec.table in SILVER_EVENTS)

LEDGER_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType()),
        T.StructField("mode", T.StringType()),
        T.StructField("as_of", T.DateType()),
        T.StructField("feature_version", T.StringType()),
        T.StructField("windows", T.StringType()),
        T.StructField("inputs", T.MapType(T.StringType(), T.LongType())),
        T.StructField("daily_rows_written", T.LongType()),
        T.StructField("feature_rows_written", T.LongType()),
        T.StructField("started_at", T.TimestampType()),
        T.StructField("finished_at", T.TimestampType()),
        # Delta's table id of each silver table read: a table dropped and made
        # again can reach the version recorded in ``inputs`` with other rows.
        T.StructField("input_ids", T.MapType(T.StringType(), T.StringType())),
        # The version of each gold table the run left: a later commit that is
        # no gold run's and changed rows (a DELETE, TRUNCATE or RESTORE) means
        # the next run cannot continue from what the table holds.
        T.StructField("outputs", T.MapType(T.StringType(), T.LongType())),
        # gold.DEFINITION_REVISION of the code that ran.
        T.StructField("definition_revision", T.IntegerType()),
    ]
)

CHANGE_SCHEMA = T.StructType(
    [
        T.StructField("table", T.StringType()),
        T.StructField("event_id", T.StringType()),
        T.StructField("user_key", T.StringType()),
        T.StructField("event_date", T.DateType()),
        T.StructField("_arrival_date", T.DateType()),
        T.StructField("_change_type", T.StringType()),
        T.StructField("_commit_version", T.LongType()),
        T.StructField("known_day", T.DateType()),
    ]
)
INSERT, UPDATE_BEFORE, UPDATE_AFTER = "insert", "update_preimage", "update_postimage"


@dataclass(frozen=True)
class GoldResult:
    """What one gold run did.

    ``mode`` is ``full``, ``incremental`` or ``up_to_date`` (nothing new in
    silver, and no newer arrival day processed). ``as_of`` is the last day of
    the feature history. ``inputs`` maps each silver table to the version read.
    """

    mode: str
    as_of: date | None
    daily_rows_written: int = 0
    feature_rows_written: int = 0
    inputs: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _LastRun:
    run_id: str
    as_of: date | None
    feature_version: str
    windows: str
    inputs: dict[str, int]
    input_ids: dict[str, str] | None
    """None for a run recorded before the ledger kept them."""
    # Whether user_features' latest commit is this run's: then it holds no
    # rows after ``as_of`` (only a run that died before its ledger row leaves
    # such rows).
    wrote_features_last: bool = False
    # The gold tables at Delta version 0: created empty since this run wrote
    # to them (a table dropped and made again), so they lack its rows.
    recreated: tuple[str, ...] = ()
    outputs: dict[str, int] | None = None
    """The gold tables' versions after this run; None for a run recorded before the ledger kept them."""
    # The commits since ``outputs`` that changed a gold table's rows and are no gold run's.
    changed_outside: tuple[str, ...] = ()
    definition_revision: int | None = None
    """gold.DEFINITION_REVISION of the code that ran; None for a run recorded before the ledger kept it."""


def ledger_spec(settings: Settings) -> tables.TableSpec:
    """``ops.gold_runs``: one row per gold run, with the silver versions it read."""
    return tables.TableSpec(settings.table("ops_gold_runs"), LEDGER_SCHEMA)


def table_specs(settings: Settings) -> list[tables.TableSpec]:
    """The gold tables and their ledger."""
    return [*gold.table_specs(settings), ledger_spec(settings)]


def ensure_tables(spark: SparkSession, settings: Settings) -> None:
    """Create the gold tables and their ledger if absent."""
    tables.ensure_tables(spark, table_specs(settings))


def refresh(spark: SparkSession, settings: Settings, *, full: bool = False) -> GoldResult:
    """Bring gold up to date with silver: incrementally, or recomputed with ``full``."""
    started = tables.utc_now()
    run_id = uuid.uuid4().hex
    names = {logical: settings.table(logical) for logical in SILVER_EVENTS}
    versions, ids, last, processed, gold_versions = _probe(spark, settings, names)
    reason = "requested" if full else _full_reason(settings, last, versions, ids)
    if reason is None and last is not None:
        if last.inputs == versions and not _days_passed(last.as_of, processed):
            log.info("gold: up to date with silver versions %s", tables.describe_versions(versions))
            return GoldResult("up_to_date", last.as_of, inputs=versions)
        result = _incremental(spark, settings, names, versions, last, processed, run_id)
        if isinstance(result, GoldResult):
            _record(spark, settings, result, ids, run_id, started, gold_versions)
            return result
        reason = result
    log.info("gold: full recompute (%s)", reason)
    result = _full(spark, settings, names, versions, processed, run_id)
    _record(spark, settings, result, ids, run_id, started, gold_versions)
    return result


def _gold_tables(settings: Settings) -> tuple[str, str]:
    """The names of ``gold.user_features`` and ``gold.user_daily``."""
    return settings.table("gold_user_features"), settings.table("gold_user_daily")


def _commit_note(run_id: str) -> str:
    """What a gold run writes in the history entry of its commits to both gold tables."""
    return f"lakeward gold run {run_id}"


def _probe(
    spark: SparkSession, settings: Settings, names: Mapping[str, str]
) -> tuple[dict[str, int], dict[str, str], _LastRun | None, date | None, dict[str, int]]:
    """Silver's versions and table ids, the last run, the last arrival day processed and gold's versions.

    Each is a small Spark job, a catalog call or a read of a Delta log
    (:mod:`lakeward.delta_log`; a Spark job each where that cannot answer) that
    spends most of its time on the driver; in sequence, as Spark jobs, they
    took about a tenth of an increment. The
    gold tables are checked at the same time: a read that came before its
    table existed is done again. The versions are read after the arrival
    day: silver records a day after writing its rows, so the versions read
    hold the rows of every day read. (Measured on the demo, reading them
    side by side saved nothing: the reads share the driver.)
    """
    features, daily = _gold_tables(settings)
    with interrupt.pool(2 * len(names) + 4) as pool:
        ensured = pool.submit(ensure_tables, spark, settings)
        last = pool.submit(_last_run, spark, settings)
        commits = {name: pool.submit(tables.last_commit, spark, name) for name in (features, daily)}
        processed = _processed_through(spark, settings)
        versions = {name: pool.submit(tables.current_version, spark, name) for name in names.values()}
        ids = {name: pool.submit(tables.table_id, spark, name) for name in names.values()}
        ensured.result()
        previous = _settled(last, partial(_last_run, spark, settings))
        gold_commits = {
            name: _settled(commit, partial(tables.last_commit, spark, name))
            for name, commit in commits.items()
        }
        gold_versions = {name: version for name, (version, _) in gold_commits.items()}
        if previous is not None:
            wrote_last = gold_commits[features][1] == _commit_note(previous.run_id)
            recreated = tuple(sorted(name for name, version in gold_versions.items() if version == 0))
            changed = _changed_outside(spark, previous.outputs, gold_versions)
            previous = replace(
                previous, wrote_features_last=wrote_last, recreated=recreated, changed_outside=changed
            )
        return (
            {name: version.result() for name, version in versions.items()},
            {name: id_.result() for name, id_ in ids.items()},
            previous,
            processed,
            gold_versions,
        )


def _changed_outside(
    spark: SparkSession, recorded: Mapping[str, int] | None, current: Mapping[str, int]
) -> tuple[str, ...]:
    """The commits to gold since the ``recorded`` versions that changed rows or columns and are no gold run's.

    Gold continues each user from the rows it wrote last; a row deleted since
    (``DELETE``, ``TRUNCATE``, a ``RESTORE`` to an older version) would make
    the next increment start that user from nothing, and a column changed
    (``ALTER TABLE``) continue it from other values. OPTIMIZE and VACUUM
    change neither; a gold run that died before its ledger row is found by
    its commit note and handled by the increment.
    """
    found = []
    for name, version in sorted(current.items()):
        since = (recorded or {}).get(name)
        if since is None or version == since:
            continue
        if version < since:
            found.append(f"{name} (created again)")
            continue
        changes = [change for change in tables.commits_after(spark, name, since) if change.version <= version]
        if [change.version for change in changes] != list(range(since + 1, version + 1)):
            # Delta removed old log entries: what happened in between cannot be told.
            found.append(f"{name} (its log after version {since} is no longer whole)")
            continue
        found += [
            f"{name} (version {change.version}: {change.operation or 'a commit'})"
            for change in changes if _foreign(change)
        ]
    return tuple(found)


def _foreign(change: delta_log.Change) -> bool:
    """Whether a commit to a gold table changed rows, columns or properties and is no gold run's.

    A column dropped and added again, or two renamed into each other's place,
    leaves rows the next increment would continue from with other values.
    """
    return (change.changes_rows or change.changes_definition) and not (
        change.user_metadata or ""
    ).startswith(_commit_note(""))


def _versions_left(spark: SparkSession, since: Mapping[str, int]) -> dict[str, int]:
    """The version of each gold table the next run continues from.

    The table's latest, when every commit after ``since`` (the versions this
    run found) is a gold run's; otherwise ``since`` itself, so that the next
    run finds the other writer's commit that came in between.
    """
    left = {}
    for name, version in since.items():
        changes = tables.commits_after(spark, name, version)
        latest = max((change.version for change in changes), default=version)
        left[name] = version if any(map(_foreign, changes)) else latest
    return left


def _processed_through(spark: SparkSession, settings: Settings) -> date | None:
    """The last arrival day of an event source that silver has processed (``ops.silver_batches``).

    Features run up to it also when silver kept no event of that day (every
    row quarantined, or no line of the day's files readable): the day
    passed, and its rows show the windows moving on. A day with only a users
    file does not count: its events may still be on their way.
    """
    return silver.last_processed_day(spark, settings, EVENT_SOURCES)


def _days_passed(as_of: date | None, processed: date | None) -> bool:
    """Whether silver processed an arrival day after ``as_of``."""
    return processed is not None and (as_of is None or processed > as_of)


def _settled(future: Future[Result], again: Callable[[], Result]) -> Result:
    """The future's result; ``again()`` if it failed because it ran before its table existed."""
    try:
        return future.result()
    except AnalysisException:
        return again()


def _windows_text(settings: Settings) -> str:
    return ",".join(str(days) for days in settings.pipeline.feature_windows_days)


def _last_run(spark: SparkSession, settings: Settings) -> _LastRun | None:
    ledger = tables.read(spark, settings.table("ops_gold_runs"))
    order = [F.col("finished_at").desc()]
    if "definition_revision" in ledger.columns:
        # Rows of an older lakeward may carry times shifted by its process's TZ, some hours ahead.
        order.insert(0, F.col("definition_revision").isNotNull().desc())
    row = ledger.orderBy(*order).first()
    if row is None:
        return None
    # A ledger created before it kept ids, outputs or revisions lacks their columns: None.
    fields = row.asDict()
    ids, outputs = fields.get("input_ids"), fields.get("outputs")
    return _LastRun(
        row["run_id"], row["as_of"], row["feature_version"], row["windows"], dict(row["inputs"]),
        None if ids is None else dict(ids), outputs=None if outputs is None else dict(outputs),
        definition_revision=fields.get("definition_revision"),
    )


def _full_reason(
    settings: Settings, last: _LastRun | None, versions: Mapping[str, int], ids: Mapping[str, str]
) -> str | None:
    if last is None:
        return "no previous gold run"
    if last.recreated:
        # A recorded run follows a first run that wrote both tables: one at version 0 was made again.
        return f"{', '.join(last.recreated)} created again since the last run (dropped?)"
    if last.outputs is not None and set(last.outputs) != set(_gold_tables(settings)):
        return "the gold tables changed names"
    if last.changed_outside:
        return f"gold changed outside lakeward since the last run: {', '.join(last.changed_outside)}"
    if last.feature_version != settings.pipeline.feature_version or last.windows != _windows_text(settings):
        return "the feature definition changed"
    if last.definition_revision != gold.DEFINITION_REVISION:
        # An older lakeward computed some values otherwise: its rows and the new ones would mix.
        return (f"this lakeward computes gold otherwise than the one of the last run (definition "
                f"revision {last.definition_revision or 'unrecorded'}, now {gold.DEFINITION_REVISION})")
    if set(last.inputs) != set(versions):
        return "the silver tables changed names"
    regressed = [name for name, version in versions.items() if version < last.inputs[name]]
    if last.input_ids is not None:
        regressed += [name for name, id_ in ids.items() if last.input_ids.get(name) not in (None, id_)]
    if regressed:
        return f"silver tables were replaced: {', '.join(sorted(set(regressed)))}"
    return None


def _change_feed(
    spark: SparkSession,
    names: Mapping[str, str],
    since: Mapping[str, int],
    until: Mapping[str, int],
) -> DataFrame:
    """Every change to the silver event tables after ``since`` up to ``until``, as known days."""
    feeds = []
    for name in names.values():
        start, end = since[name] + 1, until[name]
        if start > end:
            continue
        feeds.append(
            spark.read.format("delta")
            .option("readChangeFeed", "true")
            .option("startingVersion", start)
            .option("endingVersion", end)
            .table(name)
            .select(F.lit(name).alias("table"), "event_id", "user_key", "event_date", "_arrival_date",
                    "_change_type", "_commit_version", gold.known_day().alias("known_day"))
        )
    if not feeds:
        # No silver table changed: only arrival days passed.
        return spark.createDataFrame([], CHANGE_SCHEMA)
    return reduce(DataFrame.unionByName, feeds)


def _read_pinned(
    spark: SparkSession, names: Mapping[str, str], versions: Mapping[str, int]
) -> list[DataFrame]:
    return [_read_pinned_table(spark, names, versions, name) for name in SILVER_EVENTS]


def _read_pinned_table(
    spark: SparkSession, names: Mapping[str, str], versions: Mapping[str, int], logical: str
) -> DataFrame:
    """Silver table ``logical`` at the version this run pinned."""
    return tables.read(spark, names[logical], version=versions[names[logical]])


def _latest(*days: date | None) -> date | None:
    """The latest of the days that are not None; None if all are."""
    known = [day for day in days if day is not None]
    return max(known) if known else None


def _as_of(events: Sequence[DataFrame]) -> date | None:
    """The last arrival date over all event tables, in one Spark action."""
    arrivals = reduce(DataFrame.unionByName, [df.select("_arrival_date") for df in events])
    return arrivals.agg(F.max("_arrival_date")).first()[0]  # type: ignore[index]


def _full(
    spark: SparkSession,
    settings: Settings,
    names: Mapping[str, str],
    versions: Mapping[str, int],
    processed: date | None,
    run_id: str,
) -> GoldResult:
    orders, deliveries, ratings = _read_pinned(spark, names, versions)
    as_of = _latest(_as_of([orders, deliveries, ratings]), processed)
    daily_spec, features_spec = gold.user_daily_spec(settings), gold.user_features_spec(settings)
    daily = gold.user_daily(orders, deliveries, ratings).select(*daily_spec.schema.fieldNames())
    if as_of is None:
        log.info("gold: silver is empty")
        features = spark.createDataFrame([], features_spec.schema)
    else:
        features = gold.user_features(
            orders, deliveries, ratings, as_of=as_of,
            windows=settings.pipeline.feature_windows_days,
            version=settings.pipeline.feature_version,
        ).select(*features_spec.schema.fieldNames())
    # user_daily is partitioned by date; a range shuffle by date puts each date
    # in one task, so a date gets one file rather than one per task. Feature
    # files that each cover a few days let later increments skip most of the
    # history. Its range shuffle would need a sampling pass over the whole
    # computation, so each task sorts its rows by date and cuts them into
    # files instead.
    by_date = daily.repartitionByRange(session.shuffle_partitions(spark), "event_date")
    daily_rows, feature_rows = _both_tables(
        partial(_rebuild, spark, by_date, daily_spec.name, user_metadata=_commit_note(run_id)),
        # The feature columns follow the configured windows, which may have
        # changed since the table was written.
        partial(
            _rebuild, spark, features.sortWithinPartitions("feature_date"), features_spec.name,
            rows_per_file=settings.pipeline.gold_rows_per_file, user_metadata=_commit_note(run_id),
            replace_schema=True,
        ),
    )
    known = f"as of {as_of}" if as_of is not None else "(silver has no processed arrival day yet)"
    log.info("gold: %s rebuilt, %d rows; %s rebuilt %s, %d rows",
             daily_spec.name, daily_rows, features_spec.name, known, feature_rows)
    return GoldResult("full", as_of, daily_rows, feature_rows, dict(versions))


def _both_tables(daily: Callable[[], int], features: Callable[[], int]) -> tuple[int, int]:
    """Run the ``user_daily`` and ``user_features`` writes side by side; the rows each wrote.

    Each write is a chain of small Spark jobs and a Delta commit on its own
    table; side by side, one's driver-side work overlaps the other's tasks
    (about 0.6 s of a 10 s increment, measured).
    """
    with interrupt.pool(2) as pool:
        daily_done, features_done = pool.submit(daily), pool.submit(features)
        return daily_done.result(), features_done.result()


def _rebuild(
    spark: SparkSession,
    df: DataFrame,
    name: str,
    *,
    rows_per_file: int | None = None,
    user_metadata: str | None = None,
    replace_schema: bool = False,
) -> int:
    """Replace the table's rows with ``df`` (see :func:`tables.overwrite`); returns rows written."""
    tables.overwrite(
        df, name, rows_per_file=rows_per_file, user_metadata=user_metadata, replace_schema=replace_schema
    )
    return tables.rows_last_written(spark, name)


def _incremental(
    spark: SparkSession,
    settings: Settings,
    names: Mapping[str, str],
    versions: Mapping[str, int],
    last: _LastRun,
    processed: date | None,
    run_id: str,
) -> GoldResult | str:
    """Apply the silver rows changed since ``last``, up to the day silver ``processed``.

    Or say why gold must be recomputed in full instead: the change feed
    cannot be read, or holds changes an increment cannot apply (see
    :func:`_updates_fit_an_increment`). A moved arrival changes the day an
    event became known to an earlier one, so the user's rows restart on the
    earlier day, as for a late event; both images of the row are in
    ``changed``, and the restart is the earlier of them.
    """
    feed: DataFrame | None = None
    try:
        feed = _change_feed(spark, names, last.inputs, versions).cache()
        kind = F.col("_change_type")
        bounds = feed.agg(
            F.max((~kind.isin(INSERT, UPDATE_BEFORE, UPDATE_AFTER)).cast("int")).alias("other_changes"),
            F.max((kind != F.lit(INSERT)).cast("int")).alias("updates"),
            F.min("known_day").alias("first_known"),
            # A pre-image's arrival may no longer be in silver.
            F.max(F.when(kind != F.lit(UPDATE_BEFORE), F.col("_arrival_date"))).alias("last_arrival"),
            F.collect_set(F.when(F.col("user_key").isNotNull(), F.col("event_date"))).alias("event_dates"),
        ).first()
    except Exception as err:
        if feed is not None:
            feed.unpersist()
        if not isinstance(err, AnalysisException) and not _file_gone(err) and not _schema_replaced(err):
            raise
        reason = error_text.one_line(err)
        log.warning("gold: cannot read the silver change feed: %s", reason)
        return "silver's change feed cannot be read"
    changed = feed.filter(F.col("user_key").isNotNull() & F.col("event_date").isNotNull())
    try:
        if bounds is None or bounds["other_changes"]:
            return "silver's change feed holds deletes"
        if bounds["updates"] and not _updates_fit_an_increment(feed):
            return ("an update in silver's change feed changes an event's user or date, "
                    "or makes it known later")
        first_known: date | None = bounds["first_known"]
        as_of = _latest(last.as_of, bounds["last_arrival"], processed)
        if bounds["updates"] and _latest(_as_of(_read_pinned(spark, names, versions)), processed) != as_of:
            # Rows of a day silver wrote but did not record, all sent again
            # earlier: the feature rows after the new last day have to go.
            return "moved arrivals took silver's last arrival day back before the last run's as_of"
        if first_known is None and (last.as_of is None or as_of == last.as_of):
            # No new rows, and no day passed, or none with anything known to continue.
            log.info("gold: no new silver rows since the last run")
            return GoldResult("incremental", as_of, inputs=dict(versions))
        assert as_of is not None  # new rows have an arrival day, or the last as_of is set
        # The new days start after the last as_of; new rows of earlier days
        # start where they became known.
        starts = [first_known] if first_known is not None else []
        if last.as_of is not None and as_of > last.as_of:
            starts.append(last.as_of + timedelta(days=1))
        earliest = min(starts)
        event_dates = sorted(bounds["event_dates"])
        touched = F.col("event_date").isin(event_dates)
        # Both writes below read only these rows; reading them once, into
        # memory, saves a Delta file-listing and scan per use.
        needed = _needed_rows(spark, settings, names, versions, touched, earliest, as_of)
        try:
            daily_rows, feature_rows = _both_tables(
                partial(_replace_daily_days, settings, needed, touched, run_id) if event_dates else lambda: 0,
                partial(_write_features, spark, settings, needed, changed, last, earliest, as_of, run_id),
            )
        finally:
            for df in needed:
                df.unpersist()
    finally:
        feed.unpersist()
    log.info("gold: increment up to %s: %d user_daily rows, %d user_features rows written",
             as_of, daily_rows, feature_rows)
    return GoldResult("incremental", as_of, daily_rows, feature_rows, dict(versions))


def _schema_replaced(err: Exception) -> bool:
    """Delta refuses a change feed across a change of the table's schema other than an added column.

    A table rewritten with a new schema gives ``..._INCOMPATIBLE_DATA_SCHEMA`` (silver's own
    rewrite, once, when it hashed ``courier_id``; or someone's outside lakeward), a column
    renamed or dropped under column mapping ``..._INCOMPATIBLE_SCHEMA_CHANGE``, also when
    the change was undone since.
    """
    return "DELTA_CHANGE_DATA_FEED_INCOMPATIBLE_" in str(err)


def _file_gone(err: Exception) -> bool:
    """A file the change feed needs is gone: vacuumed (with Delta's retention check off) or deleted.

    Delta refuses versions past the retention period with an analysis error;
    a data file missing all the same is found only when a task reads it, and
    the commits of the feed's first versions, which Delta's log retention
    removes once a later checkpoint holds the table's state, when the feed is
    planned (``DELTA_LOG_FILE_NOT_FOUND``, not an analysis error). Other read
    failures (a transient I/O error, a corrupt file) are not taken for it.
    """
    text = str(err)
    return "FAILED_READ_FILE.FILE_NOT_EXIST" in text or "DELTA_LOG_FILE_NOT_FOUND" in text


def _updates_fit_an_increment(feed: DataFrame) -> bool:
    """Whether every update in the change feed keeps its event's user and date, known no later than before.

    Silver's only updates, arrivals moved back, are such; so is an update of
    a value (an amount, say), which changes the rows from the day the event
    is known. After one, the user's history starts no later than it did, so
    the rows an increment recomputes from the earlier known day replace
    every row that changes, and no stored row has to go. Another update, or
    a delete, can shorten or end a history.
    """
    before = F.col("_change_type") == F.lit(UPDATE_BEFORE)

    def image(column: str, is_before: Column) -> Column:
        return F.max(F.when(is_before, F.col(column)))

    pairs = (
        feed.filter(F.col("_change_type").isin(UPDATE_BEFORE, UPDATE_AFTER))
        .groupBy("table", "_commit_version", "event_id")
        .agg(
            F.count_if(before).alias("befores"),
            F.count_if(~before).alias("afters"),
            *[image(c, before).alias(f"{c}_before") for c in ("user_key", "event_date", "known_day")],
            *[image(c, ~before).alias(f"{c}_after") for c in ("user_key", "event_date", "known_day")],
        )
    )
    other = (
        (F.col("befores") != 1)
        | (F.col("afters") != 1)
        | ~F.col("user_key_before").eqNullSafe(F.col("user_key_after"))
        | ~F.col("event_date_before").eqNullSafe(F.col("event_date_after"))
        | ~F.coalesce(F.col("known_day_after") <= F.col("known_day_before"), F.lit(False))
    )
    return pairs.filter(other).isEmpty()


def _needed_rows(
    spark: SparkSession,
    settings: Settings,
    names: Mapping[str, str],
    versions: Mapping[str, int],
    touched: Column,
    earliest: date,
    as_of: date,
) -> list[DataFrame]:
    """The pinned silver rows of the ``touched`` days, or with a delta dated ``earliest..as_of``; cached.

    ``persist`` plans its query at once, and planning a Delta scan is driver
    work with a file-filtering job of its own: the three tables are planned
    side by side.
    """

    def pinned(name: str, spans: Sequence[int]) -> DataFrame:
        df = _read_pinned_table(spark, names, versions, name)
        return df.filter(touched | _relevant(earliest, as_of, spans)).persist()

    with interrupt.pool(len(SILVER_EVENTS)) as pool:
        planned = [
            pool.submit(pinned, name, spans)
            for name, spans in zip(SILVER_EVENTS, _delta_spans(settings), strict=True)
        ]
    cached = [future.result() for future in planned if future.exception() is None]
    if len(cached) < len(planned):
        for df in cached:
            df.unpersist()
        next(future for future in planned if future.exception() is not None).result()
    return cached


def _delta_spans(settings: Settings) -> tuple[Sequence[int], ...]:
    """Per event table (orders, deliveries, ratings): the windows its events leave after some days."""
    return (settings.pipeline.feature_windows_days, (gold.LATE_DELIVERY_DAYS,), ())


def _replace_daily_days(
    settings: Settings, needed: Sequence[DataFrame], touched: Column, run_id: str
) -> int:
    """Recompute the ``touched`` event dates and replace them in one commit.

    A day's rows depend only on that day's silver rows, so recomputing whole
    days needs no join with the table, and the write never reads it.
    """
    spec = gold.user_daily_spec(settings)
    daily = gold.user_daily(*[df.filter(touched) for df in needed]).select(*spec.schema.fieldNames())
    return tables.overwrite_where(daily, spec.name, touched, user_metadata=_commit_note(run_id))


def _write_features(
    spark: SparkSession,
    settings: Settings,
    needed: Sequence[DataFrame],
    changed: DataFrame,
    last: _LastRun,
    earliest: date,
    as_of: date,
    run_id: str,
) -> int:
    """Recompute each affected user's rows from its start day; every start day is ``>= earliest``."""
    spec = gold.user_features_spec(settings)
    previous_as_of, note = last.as_of, _commit_note(run_id)
    existing = tables.read(spark, spec.name)
    orders, deliveries, ratings = (
        df.filter(_relevant(earliest, as_of, spans))
        for df, spans in zip(needed, _delta_spans(settings), strict=True)
    )
    compute = partial(
        gold.user_features, orders, deliveries, ratings, as_of=as_of,
        windows=settings.pipeline.feature_windows_days, version=settings.pipeline.feature_version,
        from_day=earliest,
    )
    from_earliest = F.col("feature_date") >= F.lit(earliest)
    if previous_as_of is None or earliest > previous_as_of:
        # Arrival days in order: everything new became known after the last
        # run's as_of, so every user starts on the day after it, continued
        # from their row of that day (a user without one had nothing known
        # then, and their rows start with their first delta). One start day
        # for all needs no per-user starts and no join with them.
        state = None
        if previous_as_of is not None:
            state = existing.filter(F.col("feature_date") == F.lit(previous_as_of)).select(
                F.lit(previous_as_of + timedelta(days=1)).alias("start_day"),
                *[column for column in existing.columns if column != "feature_date"],
            )
        features = compute(state=state).select(*spec.schema.fieldNames())
        # Every row is a new day. Rows of those days exist only if a run died
        # before its ledger write; they are then replaced. Otherwise a plain
        # append does, and it skips the search for rows to remove and the
        # snapshot rebuild that a conditional overwrite costs. Gold has one
        # writer, so nothing lands in between. When the table's latest commit
        # is the last run's, no run wrote after it, and the Spark job that
        # looks for such rows (about 0.9 s) is not needed.
        if last.wrote_features_last or existing.filter(from_earliest).isEmpty():
            return tables.append_counted(features, spec.name, user_metadata=note)
        return tables.overwrite_where(features, spec.name, from_earliest, user_metadata=note)
    # Arrival days out of order: each affected user restarts on the first day
    # their new events became known, and the rows from there are merged.
    starts = _restart_days(changed, (orders, deliveries, ratings), existing, previous_as_of, as_of)
    # One row per start: the user's row of the day before, or nulls for a user
    # with none. Rows between ``earliest`` and a user's own start day are left
    # out by this join, so the bound needs no Spark job of its own.
    previous = existing.filter(F.col("feature_date") >= F.lit(earliest - timedelta(days=1)))
    state = starts.join(
        previous.withColumn("start_day", F.date_add(F.col("feature_date"), 1)).drop("feature_date"),
        ["user_key", "start_day"],
        "left",
    )
    features = compute(starts=starts, state=state).select(*spec.schema.fieldNames())
    keys = (F.col("t.user_key") == F.col("s.user_key")) & (
        F.col("t.feature_date") == F.col("s.feature_date")
    )
    with tables.noted_commits(spark, note):
        return _upsert(spark, spec.name, features, keys & (F.col("t.feature_date") >= F.lit(earliest)))


def _restart_days(
    changed: DataFrame,
    events: Sequence[DataFrame],
    existing: DataFrame,
    previous_as_of: date,
    as_of: date,
) -> DataFrame:
    """Per user to recompute, the day its rows restart on: ``user_key``, ``start_day``; checkpointed."""
    restarts = changed.groupBy("user_key").agg(F.min("known_day").alias("start_day"))
    if as_of > previous_as_of:
        # Every user known on the new days gets rows on them: those with a row
        # on the last as_of go on from the day after it; the others start on
        # the first day something of theirs became known. That includes
        # stored events known only on the new days (an event dated after its
        # arrival day), which the change feed does not list.
        next_day = previous_as_of + timedelta(days=1)
        known_later = reduce(DataFrame.unionByName, [
            df.filter(gold.known_day().between(F.lit(next_day), F.lit(as_of)))
            .select("user_key", gold.known_day().alias("start_day"))
            for df in events
        ])
        carried_forward = (
            existing.filter(F.col("feature_date") == F.lit(previous_as_of))
            .select("user_key", F.lit(next_day).alias("start_day"))
            .unionByName(known_later)
            .filter(F.col("user_key").isNotNull())
        )
        restarts = restarts.unionByName(carried_forward)
    return (
        restarts.groupBy("user_key").agg(F.min("start_day").alias("start_day"))
        .filter(F.col("start_day") <= F.lit(as_of))
        # Not cache(): Spark plans a cached frame that reads user_features
        # again after the feature write changes that table (three Delta file
        # listings, about 0.7 s at 3.24M events). A local checkpoint keeps the
        # rows without the plan; Spark removes them once nothing refers to it.
        .localCheckpoint()
    )


def _relevant(first_start: date, as_of: date, windows: Sequence[int]) -> Column:
    """Events with a delta dated ``first_start..as_of``: known then, or leaving a window then."""
    known = (F.col("_arrival_date") >= F.lit(first_start)) | (F.col("event_date") >= F.lit(first_start))
    leaving = [
        F.col("event_date").between(F.lit(first_start - timedelta(days=w)), F.lit(as_of - timedelta(days=w)))
        for w in windows
    ]
    return reduce(Column.__or__, leaving, known)


def _upsert(spark: SparkSession, name: str, source: DataFrame, condition: Column) -> int:
    """MERGE ``source`` into the table by ``condition``; returns rows inserted plus updated."""
    metrics = (
        DeltaTable.forName(spark, name).alias("t")
        .merge(source.alias("s"), condition)
        .whenMatchedUpdate(set=tables.merge_source(source))
        .whenNotMatchedInsert(values=tables.merge_source(source))
        .execute()
        .first()
    )
    return int(metrics["num_inserted_rows"]) + int(metrics["num_updated_rows"]) if metrics else 0


def _record(
    spark: SparkSession,
    settings: Settings,
    result: GoldResult,
    input_ids: Mapping[str, str],
    run_id: str,
    started: datetime,
    gold_versions: Mapping[str, int],
) -> None:
    """One ledger row.

    ``input_ids`` is Delta's table id of each silver table in ``result.inputs``,
    ``gold_versions`` the gold tables' versions when the run started.
    """
    row = (
        run_id,
        result.mode,
        result.as_of,
        settings.pipeline.feature_version,
        _windows_text(settings),
        result.inputs,
        result.daily_rows_written,
        result.feature_rows_written,
        started,
        tables.utc_now(),
        dict(input_ids),
        _versions_left(spark, gold_versions),
        gold.DEFINITION_REVISION,
    )
    ledger = settings.table("ops_gold_runs")
    # A ledger created before it kept table ids, outputs or revisions gains the columns; its old
    # rows get nulls.
    tables.add_columns(spark, ledger, LEDGER_SCHEMA)
    tables.append(spark.createDataFrame([row], LEDGER_SCHEMA), ledger)
