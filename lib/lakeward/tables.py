"""Table names -> Delta tables: create, append, overwrite, read as of a version, history.

Every table lakeward writes is a Delta table registered in the catalog, so
``SELECT * FROM silver.orders`` works from any process on the same data root.
A :class:`TableSpec` says what a table is: its schema, whether it holds
personal data (and in which columns), and its Delta properties. Tables that
hold personal data keep Delta column statistics only for the other columns,
because statistics in ``_delta_log`` would otherwise keep raw values. Large
tables name the few columns worth statistics, since collecting them is a large
part of the CPU a Delta write costs::

    spec = TableSpec("silver.orders", schema, subject_column="user_key")
    ensure_table(spark, spec)
    append(df, spec.name, user_metadata="a note kept in the commit's history entry")
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from delta.tables import DeltaTable, DeltaTableBuilder
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, Observation, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakeward import columns, delta_log, interrupt, root_lock
from lakeward.config import is_identifier
from lakeward.error_text import one_line

PERSONAL_DATA_PROPERTY = "lakeward.personal_data"
PERSONAL_COLUMNS_PROPERTY = "lakeward.personal_columns"
SUBJECT_COLUMN_PROPERTY = "lakeward.subject_column"
CREATE_THREADS = 4
# The name of version 0's files in ``_delta_log``, before their suffixes.
_FIRST_COMMIT = "00000000000000000000."
# From its first commit to its catalog entry, creating a table takes a second or two. A first
# commit this old with no catalog entry was left by a run that stopped, not one still creating.
CREATION_GRACE_SECONDS = 30.0
# Delta's write option for a free-text note kept in the commit's history entry.
USER_METADATA_OPTION = "userMetadata"
# The same note for commits that take no write options, such as a MERGE.
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
_NOTE_LOCK = threading.Lock()

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """Now, as an aware UTC datetime: the time lakeward writes in ledgers and lineage columns.

    PySpark turns a naive datetime into a timestamp in the process's time zone (``TZ``),
    not the session's, so a naive UTC time would be stored hours off under another ``TZ``.
    """
    return datetime.now(UTC)


@dataclass(frozen=True)
class TableSpec:
    """What a lakeward table is.

    ``personal_columns`` hold personal data (raw identifiers or contact data):
    they get no column statistics. ``subject_column`` names the column that
    identifies the person a row is about (``user_id`` in bronze, ``user_key``
    elsewhere), by which the erasure job (a later issue) will delete. ``partition_columns`` are the
    Delta partition columns, set when the table is created. ``stats_columns``
    are the columns Delta keeps statistics for (data skipping, Z-order): None
    means every column but the personal ones.
    """

    name: str
    schema: StructType
    personal_columns: tuple[str, ...] = ()
    subject_column: str | None = None
    partition_columns: tuple[str, ...] = ()
    change_data_feed: bool = False
    properties: dict[str, str] = field(default_factory=dict)
    stats_columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.stats_columns is None:
            return
        unknown = [c for c in self.stats_columns if c not in self.schema.fieldNames()]
        # Delta refuses statistics on partition columns (their values are in the log anyway).
        refused = [c for c in self.stats_columns if c in (*self.personal_columns, *self.partition_columns)]
        if unknown or refused:
            raise ValueError(
                f"{self.name}: stats_columns {list(self.stats_columns)} name columns that are not "
                f"in the schema {unknown} or are personal or partition columns {refused}"
            )

    def delta_properties(self) -> dict[str, str]:
        """Delta table properties for this spec."""
        props = dict(self.properties)
        if self.subject_column:
            props[SUBJECT_COLUMN_PROPERTY] = self.subject_column
        if self.personal_columns:
            props[PERSONAL_DATA_PROPERTY] = "true"
            props[PERSONAL_COLUMNS_PROPERTY] = ",".join(self.personal_columns)
        stats = self.stats_columns
        if stats is None and self.personal_columns:
            stats = tuple(f.name for f in self.schema.fields if f.name not in self.personal_columns)
        if stats is not None:
            props["delta.dataSkippingStatsColumns"] = ",".join(_quote(c) for c in stats)
        if self.change_data_feed:
            props["delta.enableChangeDataFeed"] = "true"
        return props


def _quote(column: str) -> str:
    return f"`{column}`" if not column.replace("_", "").isalnum() else column


def ensure_table(spark: SparkSession, spec: TableSpec) -> None:
    """Create the table (and its schema/database) if it does not exist yet."""
    ensure_tables(spark, [spec])


def ensure_tables(spark: SparkSession, specs: Sequence[TableSpec]) -> None:
    """Create the tables that do not exist yet (and their schemas), side by side; restore lost properties.

    Creating a Delta table is mostly driver-side work (a first commit, a
    snapshot, a catalog entry), which overlaps well on threads: the 16
    pipeline tables take about 3.8 s instead of 5.6 s in a warm process. In a
    new process the first Delta and catalog calls load and compile their code
    (about 10 s), and that part does not overlap. The tables that exist get
    back the properties of their spec they lost (:func:`restore_properties`).
    """
    # One spec per name: two threads creating one table would race.
    unique = {spec.name: spec for spec in specs}.values()
    missing = [spec for spec in unique if not spark.catalog.tableExists(spec.name)]
    for schema in sorted({spec.name.rsplit(".", 1)[0] for spec in missing if "." in spec.name}):
        ensure_schema(spark, schema)
    missing_names = {spec.name for spec in missing}

    def create_or_restore(spec: TableSpec) -> None:
        if spec.name in missing_names:
            _create(spark, spec)
        else:
            restore_properties(spark, spec)

    with interrupt.pool(CREATE_THREADS) as pool:
        # list() so that an error in any thread is raised here.
        list(pool.map(create_or_restore, unique))


def restore_properties(spark: SparkSession, spec: TableSpec) -> None:
    """Set again the properties of ``spec`` the table lost or holds with another value.

    Delta keeps a table's properties only until someone replaces it
    (``CREATE OR REPLACE TABLE ... AS SELECT``, a clone) or alters them. Without
    them a table holding personal data gets statistics on those columns in
    ``_delta_log`` from its next write, the erasure job no longer finds it by
    its subject column, and gold can no longer read a silver table's change
    feed. Properties the spec does not name are left as they are. Reading
    them costs no Spark job where :mod:`delta_log` can answer.
    """
    wanted = spec.delta_properties()
    held = properties(spark, spec.name)
    lost = {key: value for key, value in wanted.items() if held.get(key) != value}
    if not lost:
        return
    for text in (*lost, *lost.values()):
        # Keys and values come from lakeward's specs; checked, since this statement takes no parameter.
        if not _PROPERTY_TEXT.fullmatch(text):
            raise ValueError(f"{spec.name}: table property {text!r} is not one lakeward can set")
    statistics = "delta.dataSkippingStatsColumns" in lost and spec.personal_columns
    log.warning(
        "%s: its table properties %s are missing or changed (the table replaced or altered outside "
        "lakeward, or created by an older lakeward); setting them again%s",
        spec.name, ", ".join(sorted(lost)),
        ". Commits written since may keep statistics of its personal columns in _delta_log until "
        "Delta's log retention removes them" if statistics else "",
    )
    pairs = ", ".join(f"'{key}' = '{value}'" for key, value in sorted(lost.items()))
    spark.sql(f"ALTER TABLE {quoted_name(spec.name)} SET TBLPROPERTIES ({pairs})")


# What a table property key or value written by lakeward is made of (column lists included).
_PROPERTY_TEXT = re.compile(r"[A-Za-z0-9_.,`-]+")


def quoted_name(name: str, what: str = "table") -> str:
    """A table (or ``what``) name, each part checked to be a plain identifier and quoted.

    For statements that take no parameters: Spark 4.1 with Delta's parser refuses a
    parameter in ``IDENTIFIER()`` for ``ALTER TABLE`` and ``CREATE SCHEMA``; the name
    comes from configuration, never from data.
    """
    parts = name.split(".")
    if not all(is_identifier(part) for part in parts):
        raise ValueError(f"not a valid {what} name: {name!r}")
    return ".".join(f"`{part}`" for part in parts)


def _create(spark: SparkSession, spec: TableSpec) -> None:
    """Create the table; also over the first commit of a creation that never reached the catalog.

    Delta writes a new table's first commit and then registers it in the
    catalog. A process killed between the two leaves a location the next
    creation refuses. That commit holds a schema and no rows, so it is
    removed and the table created again; any other files there are not
    lakeward's to remove. On a catalog other processes share (a cluster's
    metastore), a first commit may instead be another run's, creating the
    same table at the same moment: the table that run registers is used.
    """
    try:
        _builder(spark, spec).execute()
    except Exception as err:  # noqa: BLE001 - a creation beside another shows in several ways
        if _created_by_another_run(spark, spec.name):
            log.info("%s: created by another run at the same time", spec.name)
            return
        if not isinstance(err, AnalysisException) or (
            err.getCondition() != "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION"
        ):
            raise
        location = _local_managed_location(spark, spec.name)
        if location is None or not _holds_only_a_first_commit(location):
            raise UnknownTableFilesError(
                f"cannot create {spec.name}: its location {location or '(not a local path)'} already "
                "holds files the catalog does not know (a table dropped from the catalog but not from "
                "disk?); move them away and run again"
            ) from None
        log.warning("%s: a creation that stopped before it reached the catalog left %s; creating it again",
                    spec.name, location)
        shutil.rmtree(location)
        _builder(spark, spec).execute()


def _created_by_another_run(spark: SparkSession, name: str) -> bool:
    """Whether another process has registered ``name`` while this one failed to create it.

    On a shared catalog, while anything in the location (a first commit, or one
    being written) is younger than :data:`CREATION_GRACE_SECONDS`, this waits for
    its creator to register it.
    A process holding its data root's lock has the catalog to itself: no wait.
    """
    if exists(spark, name):
        return True
    if root_lock.holds_a_data_root():
        return False
    location = _local_managed_location(spark, name)
    while location is not None and _seconds_since_written(location) < CREATION_GRACE_SECONDS:
        time.sleep(0.5)
        if exists(spark, name):
            return True
    return False


def _seconds_since_written(location: Path) -> float:
    """Seconds since anything in ``location`` or its ``_delta_log`` was last written.

    Infinite when it is not there. A commit being written is a temporary file
    there until it is renamed, so a creation in progress counts too.
    """
    log_dir = location / "_delta_log"
    try:
        paths = [location, log_dir, *(log_dir.iterdir() if log_dir.is_dir() else ())]
    except FileNotFoundError:
        paths = [location, log_dir]
    written = []
    for path in paths:
        try:
            written.append(path.stat().st_mtime)
        except FileNotFoundError:  # renamed or removed since it was listed
            continue
    return time.time() - max(written) if written else float("inf")


def _builder(spark: SparkSession, spec: TableSpec) -> DeltaTableBuilder:
    builder = DeltaTable.createIfNotExists(spark).tableName(spec.name).addColumns(spec.schema)
    if spec.partition_columns:
        builder = builder.partitionedBy(*spec.partition_columns)
    for key, value in spec.delta_properties().items():
        builder = builder.property(key, value)
    return builder


def _local_managed_location(spark: SparkSession, name: str) -> Path | None:
    """Where the catalog puts the managed table ``name``, if that is a local directory."""
    *schema, table = name.split(".")
    uri = spark.catalog.getDatabase(".".join(schema) or spark.catalog.currentDatabase()).locationUri
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) / table.lower() if parsed.scheme in ("", "file") else None


def _holds_only_a_first_commit(location: Path) -> bool:
    """Whether ``location`` holds nothing but Delta's first commit (and its checksums): no rows."""
    if {entry.name for entry in location.iterdir()} != {"_delta_log"}:
        return False
    return all(
        entry.name.lstrip(".").startswith(_FIRST_COMMIT) or (entry.is_dir() and not any(entry.iterdir()))
        for entry in (location / "_delta_log").iterdir()
    )


class UnknownTableFilesError(RuntimeError):
    """A table's location holds files the catalog does not know, so lakeward cannot create it."""


def ensure_schema(spark: SparkSession, name: str) -> None:
    """Create a schema (database), ``schema`` or ``catalog.schema``, if absent.

    Spark 4.1 does not accept a parameter marker in ``IDENTIFIER()`` for
    ``CREATE SCHEMA``, so the name, which comes from configuration, is checked
    to be a plain identifier and quoted.
    """
    spark.sql("CREATE SCHEMA IF NOT EXISTS " + quoted_name(name, what="schema"))


def exists(spark: SparkSession, name: str) -> bool:
    """Whether the table is registered in the catalog."""
    return spark.catalog.tableExists(name)


def merge_source(source: DataFrame, alias: str = "s") -> dict[str, str | Column]:
    """Each column of a MERGE's source ``alias``, by name, for ``set=`` and ``values=``.

    A column a user added to the target table is then left as it is (null in
    inserted rows); ``UPDATE SET *`` and ``INSERT *`` refuse such a column,
    unknown to the source, and every MERGE into the table would fail.
    """
    return {name: columns.ref(name, of=alias) for name in source.columns}


def append(df: DataFrame, name: str, *, user_metadata: str | None = None) -> None:
    """Append ``df`` to the table; ``user_metadata`` is kept in the commit's history entry.

    See :func:`last_commit_metadata`.
    """
    df.write.format("delta").mode("append").options(**_noted(user_metadata)).saveAsTable(name)


def add_columns(spark: SparkSession, name: str, schema: StructType) -> None:
    """Add the columns of ``schema`` the table lacks (nullable; existing rows get nulls).

    An empty append with ``mergeSchema``: one commit that changes only the
    schema, and no SQL text built from the table's name. A table that has every
    column is left as it is, without a commit.
    """
    if set(schema.fieldNames()) <= set(read(spark, name).columns):
        return
    empty = spark.createDataFrame([], schema)
    empty.write.format("delta").mode("append").option("mergeSchema", "true").saveAsTable(name)


def rename_columns(spark: SparkSession, name: str, renames: Mapping[str, str]) -> None:
    """Give the table's columns named in ``renames`` their new names; a table without them is left as it is.

    For small unpartitioned tables such as ledgers: the table is rewritten in one commit
    (no ``partitionBy``). A Delta rename in place needs column mapping, a protocol upgrade
    every reader of the table would then need. History, properties and the table id stay.
    """
    current = read(spark, name)
    present = {old: new for old, new in renames.items() if old in current.columns}
    if not present:
        return
    log.info("%s: renaming columns %s", name, ", ".join(f"{old} -> {new}" for old, new in present.items()))
    current.withColumnsRenamed(present).write.format("delta").mode("overwrite").option(
        "overwriteSchema", "true"
    ).saveAsTable(name)


def append_side_by_side(writes: Sequence[tuple[DataFrame, str]]) -> list[int]:
    """Append each frame to its table, all at once on one thread per table; the rows each appended.

    A Delta append is a Spark job framed by driver-side work (planning,
    reading the snapshot, committing); side by side, the jobs of some writes
    fill the driver-side gaps of the others. Each table gets its own commit,
    so a failure can leave some appended and not others, as sequential writes
    would. The rows are counted as they are written (:func:`append_counted`).
    """
    with interrupt.pool(max(1, len(writes))) as pool:
        # list() so that an error in any thread is raised here.
        return list(pool.map(lambda write: append_counted(*write), writes))


def overwrite(
    df: DataFrame,
    name: str,
    *,
    rows_per_file: int | None = None,
    user_metadata: str | None = None,
    replace_schema: bool = False,
) -> None:
    """Replace the table's contents in one commit; its schema too with ``replace_schema``.

    The table's properties are kept either way.
    """
    writer = df.write.format("delta").mode("overwrite").options(**_noted(user_metadata))
    if replace_schema:
        writer = writer.option("overwriteSchema", "true")
    if rows_per_file is not None:
        writer = writer.option("maxRecordsPerFile", rows_per_file)
    writer.saveAsTable(name)


def append_counted(df: DataFrame, name: str, *, user_metadata: str | None = None) -> int:
    """Append ``df`` to the table; returns the rows appended."""
    observed, rows = _counted(df)
    append(observed, name, user_metadata=user_metadata)
    return rows()


def overwrite_where(
    df: DataFrame, name: str, condition: Column, *, user_metadata: str | None = None
) -> int:
    """Replace the rows matching ``condition`` with ``df`` in one commit; returns rows written.

    Delta checks that every written row satisfies ``condition``, so a write
    can never leave rows outside the part it replaces::

        overwrite_where(day_rows, "gold.user_daily", F.col("event_date") >= F.lit(day))
    """
    observed, rows = _counted(df)
    observed.writeTo(name).options(**_noted(user_metadata)).overwrite(condition)
    return rows()


def _noted(user_metadata: str | None) -> dict[str, str]:
    """The write options that keep ``user_metadata`` in the commit's history entry."""
    return {USER_METADATA_OPTION: user_metadata} if user_metadata is not None else {}


@contextmanager
def noted_commits(spark: SparkSession, user_metadata: str) -> Iterator[None]:
    """Delta commits made in the block keep ``user_metadata`` in their history entry.

    For operations that take no write option for it, such as a MERGE. The
    setting is the session's: a commit on another thread meanwhile gets the
    note too, unless its write sets its own. Blocks on several threads take
    turns, so each puts back the value it found.
    """
    with _NOTE_LOCK:
        previous = spark.conf.get(USER_METADATA_CONF, None)
        spark.conf.set(USER_METADATA_CONF, user_metadata)
        try:
            yield
        finally:
            if previous is None:
                spark.conf.unset(USER_METADATA_CONF)
            else:
                spark.conf.set(USER_METADATA_CONF, previous)


def _counted(df: DataFrame) -> tuple[DataFrame, Callable[[], int]]:
    """``df`` counting its rows as the next action runs it, and a getter for the count.

    The count costs no Spark job, where reading it back from the table's
    history costs one. It works only for writes that run the frame's own plan,
    as :func:`append_counted` and :func:`overwrite_where` do; a ``saveAsTable``
    overwrite plans the query anew and the count is lost, so that one uses
    :func:`rows_last_written`.
    """
    observation = Observation()
    observed = df.observe(observation, F.count(F.lit(1)).alias("rows"))
    return observed, lambda: int(observation.get["rows"])


def rows_last_written(spark: SparkSession, name: str) -> int:
    """Rows the table's last commit wrote, from Delta's own operation metrics."""
    commit = delta_log.last_commit(spark, name)
    if commit is not None:
        return int(commit.operation_metrics.get("numOutputRows", 0))
    metrics = _last_commit(spark, name)["operationMetrics"]
    return int((metrics or {}).get("numOutputRows", 0))


def replace(df: DataFrame, spec: TableSpec, properties: dict[str, str] | None = None) -> None:
    """Replace the table's contents, schema and properties in one commit.

    ``CREATE OR REPLACE TABLE ... AS SELECT``: the spec's properties plus
    ``properties`` become the table's only properties, and they land in the
    same commit as the data, so no reader sees new rows with old properties.
    The table's history (and time travel to earlier versions) is kept::

        replace(df, spec, {"lakeward.training_set.content_hash": digest})
    """
    if "." in spec.name:
        ensure_schema(df.sparkSession, spec.name.rsplit(".", 1)[0])
    writer = df.select(*spec.schema.fieldNames()).writeTo(spec.name).using("delta")
    if spec.partition_columns:
        writer = writer.partitionedBy(*[F.col(c) for c in spec.partition_columns])
    for key, value in {**spec.delta_properties(), **(properties or {})}.items():
        writer = writer.tableProperty(key, value)
    writer.createOrReplace()


def properties(spark: SparkSession, name: str) -> dict[str, str]:
    """The table's current properties, as ``DESCRIBE DETAIL`` has them."""
    latest = delta_log.snapshot(spark, name)
    if latest is not None:
        return latest.properties
    row = DeltaTable.forName(spark, name).detail().select("properties").first()
    return dict(row["properties"] or {}) if row is not None else {}


def read(spark: SparkSession, name: str, *, version: int | None = None) -> DataFrame:
    """The table's current contents, or its contents at a Delta ``version``."""
    if version is None:
        return spark.read.table(name)
    return spark.read.format("delta").option("versionAsOf", version).table(name)


def describe_versions(versions: Mapping[str, int]) -> str:
    """``silver.orders@v3, gold.user_features@v5``."""
    return ", ".join(f"{table}@v{version}" for table, version in sorted(versions.items()))


class VersionGoneError(LookupError):
    """A table cannot be read at a version: dropped, never that far, log cleaned up or files vacuumed."""


def read_version(
    spark: SparkSession,
    name: str,
    version: int,
    *,
    expected_id: str | None = None,
    frame: DataFrame | None = None,
) -> DataFrame:
    """``name`` at ``version``, checked now to be readable, not at the first action on it.

    With ``expected_id``, the table must still be the one of that Delta id (one
    dropped and created again has lost the version read). ``frame`` is the table
    already read at ``version``, whose Delta state is not read again. Raises
    :class:`VersionGoneError` saying why the version is gone.
    """
    if not exists(spark, name):
        raise VersionGoneError(f"{name} no longer exists, so version {version} cannot be read")
    try:
        # One read of the log gives both; the fallbacks read Delta's detail and history.
        snapshot = delta_log.snapshot(spark, name)
        latest, current = ((snapshot.version, snapshot.table_id) if snapshot is not None
                           else (current_version(spark, name), table_id(spark, name)))
    except Exception as err:  # noqa: BLE001 - a catalog entry whose files or log are gone, or no Delta table
        raise VersionGoneError(f"{name} cannot be read at version {version}: {one_line(err)}") from None
    if expected_id is not None and current != expected_id:
        raise VersionGoneError(
            f"{name} was dropped and created again since version {version} was read (Delta table id "
            f"{expected_id}, now {current}), so that version is gone"
        )
    if version > latest:
        raise VersionGoneError(f"{name} has no version {version}: its latest version is {latest}")
    try:
        df = frame if frame is not None else read(spark, name, version=version)
        files = df.inputFiles()
    except Exception as err:  # noqa: BLE001 - Delta reports a cleaned-up log in several ways
        raise VersionGoneError(
            f"{name} version {version} is no longer available (log retention or VACUUM): {one_line(err)}"
        ) from None
    gone = _missing_files(spark, files)
    if gone:
        raise VersionGoneError(
            f"{name} version {version} is no longer available: {len(gone)} of its {len(files)} data "
            f"files were removed (VACUUM), e.g. {gone[0]}"
        )
    return df


def _missing_files(spark: SparkSession, files: Sequence[str]) -> list[str]:
    """The data files of ``files`` that are not there: local ones looked up, others listed by Spark."""
    missing, remote = [], []
    for uri in files:
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            # Spark may give a path as a URI (%20 for a space) or as it is spelt.
            if not Path(unquote(parsed.path)).exists() and not Path(parsed.path).exists():
                missing.append(uri)
        else:
            remote.append(uri)
    if remote:
        listed = listed_names(spark, sorted({uri.rsplit("/", 1)[0] for uri in remote}))
        missing += [uri for uri in remote if uri.rsplit("/", 1)[-1] not in listed]
    return sorted(missing)


def listed_names(spark: SparkSession, directories: Sequence[str]) -> set[str]:
    """The names of the files in ``directories``; a directory that is not there holds none.

    One Spark job lists them all (binaryFile reads no content unless asked);
    when one of them is gone, which fails that job, each is listed alone. Any
    other failure (permissions, credentials, the store unreachable) is raised:
    it says nothing about whether the files are there.
    """
    def names(paths: Sequence[str]) -> set[str]:
        rows = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
                .load(list(paths)).select("path").collect())
        return {row["path"].rsplit("/", 1)[-1] for row in rows}

    try:
        return names(directories)
    except AnalysisException as err:
        if err.getCondition() != "PATH_NOT_FOUND":
            raise
        if len(directories) == 1:
            return set()
    return set().union(*(listed_names(spark, [directory]) for directory in directories))


def current_version(spark: SparkSession, name: str) -> int:
    """The table's latest Delta version."""
    latest = delta_log.snapshot(spark, name)
    return latest.version if latest is not None else int(_last_commit(spark, name)["version"])


def row_counts(spark: SparkSession, names: Sequence[str]) -> dict[str, int]:
    """The rows each table holds, from its log's statistics (:func:`delta_log.row_count`) or counted."""

    def count(name: str) -> int:
        rows = delta_log.row_count(spark, name)
        return rows if rows is not None else read(spark, name).count()

    return _side_by_side(count, names)


def _side_by_side(get: Callable[[str], int], names: Sequence[str]) -> dict[str, int]:
    with interrupt.pool(max(1, len(names))) as pool:
        futures = {name: pool.submit(get, name) for name in names}
        return {name: future.result() for name, future in futures.items()}


def table_id(spark: SparkSession, name: str) -> str:
    """Delta's id of the table: it changes when the table is dropped and created again."""
    latest = delta_log.snapshot(spark, name)
    if latest is not None:
        return latest.table_id
    row = DeltaTable.forName(spark, name).detail().select("id").first()
    if row is None:
        raise LookupError(f"table {name} has no details")
    return str(row["id"])


def last_commit_metadata(spark: SparkSession, name: str) -> str | None:
    """The ``user_metadata`` of the table's latest commit; None if that commit has none."""
    return last_commit(spark, name)[1]


def last_commit(spark: SparkSession, name: str) -> tuple[int, str | None]:
    """The latest Delta version and its commit's ``user_metadata``: from the log, else one history read."""
    commit = delta_log.last_commit(spark, name)
    if commit is not None:
        return commit.version, commit.user_metadata
    row = _last_commit(spark, name)
    note = row["userMetadata"]
    return int(row["version"]), (str(note) if note is not None else None)


# Operations that leave a table's rows as they were, for a history read without file actions.
# (Delta's DeltaOperations names.)
_ROW_PRESERVING = frozenset({
    "OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES",
    "ADD CONSTRAINT", "DROP CONSTRAINT", "CHANGE COLUMN", "CHANGE COLUMNS", "ADD COLUMNS",
    "DROP COLUMNS", "RENAME COLUMN", "REPLACE COLUMNS", "UPDATE SCHEMA", "UPGRADE PROTOCOL",
    "COMPUTE STATS", "CLUSTER BY", "DROP FEATURE", "REORG", "REORG TABLE UPGRADE UNIFORM",
    "ROW TRACKING BACKFILL", "ROW TRACKING UNBACKFILL", "DOMAIN METADATA CLEANUP",
    "REMOVE COLUMN MAPPING",
})
# Of those, the operations that change a table's schema or properties (a metaData action in
# its log; Delta's protocol upgrade, named SET TBLPROPERTIES, writes one too).
_DEFINITION_CHANGING = frozenset({
    "SET TBLPROPERTIES", "UNSET TBLPROPERTIES", "CHANGE COLUMN", "CHANGE COLUMNS", "ADD COLUMNS",
    "DROP COLUMNS", "RENAME COLUMN", "REPLACE COLUMNS", "UPDATE SCHEMA", "REMOVE COLUMN MAPPING",
    "CLUSTER BY", "DROP FEATURE",
})


def commits_after(spark: SparkSession, name: str, version: int) -> list[delta_log.Change]:
    """The table's commits after ``version``, oldest first: from the log, else from its history."""
    changes = delta_log.commits_after(spark, name, version)
    if changes is not None:
        return changes
    rows = history(spark, name).filter(F.col("version") > version).orderBy("version").collect()
    return [
        delta_log.Change(
            int(row["version"]), str(row["operation"]), row["userMetadata"],
            str(row["operation"]) not in _ROW_PRESERVING,
            str(row["operation"]) in _DEFINITION_CHANGING,
        )
        for row in rows
    ]


def _last_commit(spark: SparkSession, name: str) -> Row:
    """The table's latest history entry."""
    row = history(spark, name, 1).first()
    if row is None:
        raise LookupError(f"table {name} has no history")
    return row


def history(spark: SparkSession, name: str, limit: int | None = None) -> DataFrame:
    """``DESCRIBE HISTORY`` as a DataFrame, newest first."""
    table = DeltaTable.forName(spark, name)
    return table.history(limit) if limit else table.history()
