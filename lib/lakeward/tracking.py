"""MLflow tracking: a real backend store, Delta lineage on every run, and rebuilds by run id.

By default runs go to SQLite at ``<data_root>/mlflow/mlflow.db`` and artifacts to
``<data_root>/mlflow/artifacts`` (never ``./mlruns``); ``tracking.uri`` in the config
points at a remote server instead. Telemetry is off. A training run records, as MLflow
dataset inputs, every Delta table its training set was built from (name, path and
version) and the training-set table itself, plus the config, the code version and the
content hash of the exact training rows, so the set can be rebuilt and checked::

    experiment_id = configure(settings)
    inputs = training_inputs(spark, snapshot)       # once; every run of the snapshot logs them
    with mlflow.start_run(experiment_id=experiment_id):
        log_run_context(settings, snapshot.spec)
        log_training_lineage(snapshot, inputs)
    ...
    rebuild_training_set(spark, settings, run_id)   # same rows, or LineageError

mlflow is imported on first use: it costs seconds of start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import yaml

from lakeward import tables
from lakeward.config import Settings, default_registry
from lakeward.error_text import one_line

if TYPE_CHECKING:
    from mlflow.entities import Run
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# The same names as training_set's table properties, so a run and its table say it alike.
SPEC_TAG = "lakeward.training_set.spec"
HASH_TAG = "lakeward.training_set.content_hash"
TABLE_TAG = "lakeward.training_set.table"
VERSION_TAG = "lakeward.training_set.version"
ROWS_TAG = "lakeward.training_set.rows"
CODE_VERSION_TAG = "lakeward.code_version"
MODEL_NAME_TAG = "lakeward.model_name"
MODEL_VERSION_TAG = "lakeward.model_version"
# On a registered model version: the parent run of the run that registered it.
PARENT_RUN_TAG = "lakeward.parent_run_id"
MODEL_URI_TAG = "lakeward.model_uri"

# Input tags: MLflow's Delta source keeps no path when it has a table name (it takes
# exactly one of the two), so every input also carries name, version and path as tags.
INPUT_TABLE_TAG = "lakeward.delta_table"
INPUT_VERSION_TAG = "lakeward.delta_version"
INPUT_PATH_TAG = "lakeward.delta_path"
SOURCE_CONTEXT = "source"
TRAINING_CONTEXT = "training"

class LineageError(RuntimeError):
    """A run's training set cannot be rebuilt exactly: names the run, tables and versions."""


class BuildSpecLike(Protocol):
    """What tracking needs of ``lakeward.training_set.BuildSpec``."""

    @property
    def inputs(self) -> dict[str, int]:
        """Input table name -> Delta version read."""
        ...

    @property
    def input_ids(self) -> dict[str, str] | None:
        """Input table name -> Delta table id when read; None in an old spec."""
        ...

    def to_json(self) -> str:
        """The spec as JSON."""
        ...


@dataclass(frozen=True)
class TrainingSnapshot:
    """The training set a run trains on: one table at one Delta version, and how it was built."""

    table: str
    version: int
    rows: int
    content_hash: str
    spec: BuildSpecLike


@dataclass(frozen=True)
class LoggedInput:
    """One Delta table a run logged as a dataset input."""

    table: str
    version: int
    path: str | None
    context: str


@dataclass(frozen=True)
class Lineage:
    """What a run recorded about its training set."""

    run_id: str
    spec_json: str
    content_hash: str
    table: str | None
    version: int | None
    inputs: tuple[LoggedInput, ...]


@dataclass(frozen=True)
class RebuildResult:
    """A verified rebuild: the hash matched the run's."""

    run_id: str
    content_hash: str
    inputs: dict[str, int]
    output: str | None
    output_version: int | None


# --- setup -----------------------------------------------------------------------------


def mlflow_module() -> Any:
    """``mlflow``, imported with telemetry off (it is read when mlflow is imported).

    Nor does MLflow print a run's link when it ends one on a tracking server: stdout
    carries the command's own output, run ids first, and the link is built from the
    store's URI as configured, ``user:password@`` included.
    """
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    import mlflow

    return mlflow


def tracking_uri(settings: Settings) -> str:
    """``tracking.uri``, else SQLite under the data root."""
    if settings.tracking.uri:
        return settings.tracking.uri
    return f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}"


def registry_uri(settings: Settings) -> str:
    """``tracking.registry_uri``, else :func:`lakeward.config.default_registry` of the tracking store."""
    return settings.tracking.registry_uri or default_registry(tracking_uri(settings))


def artifact_location(settings: Settings) -> str | None:
    """Artifact root for an experiment lakeward creates; ``None`` lets a server decide."""
    if settings.tracking.artifact_location:
        return settings.tracking.artifact_location
    scheme = urlparse(tracking_uri(settings)).scheme
    if scheme in ("http", "https") or scheme.startswith("databricks"):
        return None
    return (settings.mlflow_dir / "artifacts").as_uri()


def configure(settings: Settings) -> str:
    """Point MLflow at the configured store and return the experiment id (created if absent)."""
    mlflow = mlflow_module()
    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    _use_store(uri, registry_uri(settings))
    name = settings.tracking.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id: str = mlflow.create_experiment(name, artifact_location=artifact_location(settings))
        except mlflow.exceptions.MlflowException:
            # Another process created it first.
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
        log.info("tracking: created experiment %r at %s", name, shown_uri(uri))
    else:
        experiment_id = experiment.experiment_id
    # A run started without an experiment id (a nested run, say) would otherwise land in
    # the default experiment, whose artifacts go to ./mlruns.
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def configure_to_read(settings: Settings, run_id: str) -> None:
    """Point MLflow at the configured store to look up ``run_id``, creating no experiment.

    A SQLite store whose file does not exist yet holds no run: say so, rather than let
    MLflow create the database (and :func:`configure` the experiment) for a lookup that fails.
    """
    uri = tracking_uri(settings)
    store = _sqlite_file(uri)
    if store is not None and not store.exists():
        raise LineageError(
            f"no MLflow run {run_id!r}: nothing has been tracked in {store} yet (`lakeward train` logs runs)"
        )
    _use_store(uri, registry_uri(settings))


# The stores this process pointed MLflow at.
_STORES_USED: set[str] = set()


def _warn_of_ignored_environment(uri: str, registry: str | None = None) -> None:
    """Say so when MLflow's own variables name other stores than those lakeward uses.

    An MLflow user expects ``MLFLOW_TRACKING_URI`` to decide where runs go; here the
    config does, so that every process on a data root logs to the same store.
    """
    chosen = {"MLFLOW_TRACKING_URI": (uri, "tracking.uri"),
              "MLFLOW_REGISTRY_URI": (registry or uri, "tracking.registry_uri")}
    for variable, (store, key) in chosen.items():
        value = os.environ.get(variable)
        # MLflow itself exports the URI it is given, for subprocesses: not the user's.
        if value and value != store and value not in _STORES_USED:
            log.warning(
                "%s is set but not used: lakeward uses %s from its config, or its default (%s); "
                "set %s in conf/<env>.yml to use another store",
                variable, key, shown_uri(store), key,
            )


def _use_store(uri: str, registry: str | None = None) -> None:
    """Runs go to ``uri``, registered models to ``registry`` (by default the same store)."""
    registry = registry or uri
    _warn_of_ignored_environment(uri, registry)
    mlflow = mlflow_module()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    _STORES_USED.update((uri, registry))


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI, parsed as SQLAlchemy does (``?timeout=30`` is not in it)."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return None if not database or database == ":memory:" else Path(database)


def client() -> Any:
    """An ``MlflowClient`` on the configured store (call :func:`configure` first)."""
    return mlflow_module().MlflowClient()


# --- what a run logs -------------------------------------------------------------------


def code_version() -> str:
    """``git:<commit>`` (``+dirty`` if changed) of lakeward's checkout, else the package version.

    The checkout is the clone lakeward runs from (or an editable install of one), not
    the conf directory's repository: ``LAKEWARD_CONF_DIR`` may be a repository of configs.
    """
    package = Path(__file__).resolve().parent
    project = package.parents[1]  # <checkout>/lib/lakeward/tracking.py
    if package != project / "lib" / "lakeward":  # installed: in site-packages, or a --target directory
        return f"lakeward=={package_version()}"
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never refresh the index
    try:
        top = _git(project, env, "rev-parse", "--show-toplevel")
        if Path(top).resolve() == project:
            commit = _git(project, env, "rev-parse", "HEAD")
            dirty = _git(project, env, "status", "--porcelain", "--untracked-files=no")
            return f"git:{commit}" + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"lakeward=={package_version()}"


def _git(cwd: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(  # noqa: S603 - fixed argument list
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=10, check=True
    )
    return result.stdout.strip()


@cache
def package_version() -> str:
    """The installed lakeward version."""
    try:
        return metadata.version("lakeward")
    except metadata.PackageNotFoundError:
        return "unknown"


# Spark's own default for spark.redaction.regex, plus credentials: a setting whose key
# matches is logged as REDACTED, as Spark's UI and event log show it.
_SECRETS = r"secret|password|passwd|pwd|token|access[.]?key|account[.]key|credential"
_SECRET_KEY = re.compile(_SECRETS, re.IGNORECASE)
# user:password@ in any URI (tracking.uri may be a database URL, spark.conf a JDBC one).
_URI_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
# Within a value: a -D option (extraJavaOptions holds several) or a URL or JDBC parameter
# (?password=..., ;password=...) whose name says it holds a secret.
_NAMED_SECRET = re.compile(
    rf"((?:^|\s)-D[^=\s]*(?:{_SECRETS})[^=\s]*=|[?&;][^=&;\s]*(?:{_SECRETS})[^=&;\s]*=)[^&;\s]*",
    re.IGNORECASE,
)
REDACTED = "*********(redacted)"


def shown_uri(text: str) -> str:
    """``text`` with the ``user:password@`` of any URI in it masked, for a log line or a message."""
    return _URI_USERINFO.sub("***@", text)


# The training-set settings a build records in its spec.
_BUILT_WITH = ("horizon_days", "ttl_days", "split", "fractions", "seed", "t1", "t2")
_ORDERS_WINDOW = re.compile(r"orders_(\d+)d")


def loggable_settings(settings: Settings, spec: BuildSpecLike | None = None) -> dict[str, Any]:
    """The settings as MLflow may keep them: no credential from a URI, a Spark setting or a JVM option.

    With the ``spec`` of the training set a run trains on, its ``training_set``
    values, ``feature_version`` and feature windows are those the set was built
    with (the config may have changed since): the run's params say what it trained on.
    """

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(key, item) for item in value]
        if not isinstance(value, str):
            return value
        if _SECRET_KEY.search(key):
            return REDACTED
        return shown_uri(_NAMED_SECRET.sub(lambda m: m.group(1) + REDACTED, value))

    dump: dict[str, Any] = clean("", settings.model_dump(mode="json"))
    if spec is not None:
        built = json.loads(spec.to_json())
        dump["training_set"].update({key: built[key] for key in _BUILT_WITH})
        dump["pipeline"]["feature_version"] = built["feature_version"]
        windows = [int(match.group(1)) for column in built.get("feature_columns") or ()
                   if (match := _ORDERS_WINDOW.fullmatch(column))]
        if windows:
            dump["pipeline"]["feature_windows_days"] = windows
    return dump


def config_params(settings: Settings, spec: BuildSpecLike | None = None) -> dict[str, str]:
    """The settings flattened to MLflow params (``training.epochs`` -> ``"10"``), credentials redacted.

    ``spec``: as in :func:`loggable_settings`.
    """
    return _flattened(loggable_settings(settings, spec))


def _flattened(dump: Mapping[str, Any]) -> dict[str, str]:
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value if isinstance(value, str) else json.dumps(value)

    walk("", dump)
    return flat


def log_run_context(settings: Settings, spec: BuildSpecLike | None = None) -> None:
    """Config (params and a YAML artifact) and code version on the active run.

    ``spec``: the training set's, whose build values replace the config's (:func:`loggable_settings`).
    """
    mlflow = mlflow_module()
    dump = loggable_settings(settings, spec)
    mlflow.log_params(_flattened(dump))
    mlflow.log_text(yaml.safe_dump(dump, sort_keys=True), "config/settings.yml")
    version = code_version()
    tags = {CODE_VERSION_TAG: version, "lakeward.package_version": package_version()}
    if version.startswith("git:"):
        tags["mlflow.source.git.commit"] = version[4:].removesuffix("+dirty")
    mlflow.set_tags(tags)


def table_location(spark: SparkSession, table: str) -> str | None:
    """The Delta table's storage location."""
    from delta.tables import DeltaTable

    row = DeltaTable.forName(spark, table).detail().select("location").first()
    return None if row is None else str(row["location"])


def delta_dataset(
    spark: SparkSession,
    table: str,
    version: int,
    *,
    table_id: str,
    rows: int | None = None,
    targets: str | None = None,
) -> Any:
    """An MLflow dataset for ``table`` at Delta ``version`` (a ``DeltaDatasetSource``).

    Built like ``mlflow.data.load_delta(table_name=..., version=...)``, but with a
    digest from the table's Delta id and version and a row count given by the caller:
    MLflow's own profile runs a Python RDD job per table and its digest depends on the
    query plan, not the data version. MLflow keeps one dataset per name and digest in
    an experiment, so a digest from the name alone would give a table dropped and
    made again, or one of another data root, the first one's record (its row count).
    """
    source = _source_class()(delta_table_name=qualified_name(spark, table), delta_table_version=version)
    digest = hashlib.sha256(f"{table_id}@v{version}".encode()).hexdigest()[:16]
    frame = tables.read(spark, table, version=version)
    return _dataset_class()(
        df=frame, source=source, targets=targets, name=f"{table}@v{version}", digest=digest, rows=rows
    )


def qualified_name(spark: SparkSession, table: str) -> str:
    """``catalog.schema.table``.

    MLflow takes the first part of a two-part name for a catalog, so ``silver.orders``
    would pass for a Unity Catalog table (and send MLflow looking for Databricks
    credentials); the session's current catalog makes the name exact.
    """
    parts = table.split(".")
    if len(parts) >= 3:
        return table
    if len(parts) == 1:
        parts.insert(0, spark.catalog.currentDatabase())
    return ".".join([spark.catalog.currentCatalog(), *parts])


_MLFLOW_TYPES = {
    "string": "string", "boolean": "boolean", "binary": "binary", "date": "datetime",
    "timestamp": "datetime", "timestamp_ntz": "datetime", "float": "float", "double": "double",
    "decimal": "double", "tinyint": "integer", "smallint": "integer", "int": "integer", "bigint": "long",
}


def mlflow_schema(schema: Any) -> Any:
    """An MLflow column schema for a Spark schema (decimals as double, dates as datetime).

    MLflow's own inference gives up on decimal and date columns and logs no schema.
    """
    from mlflow.types import ColSpec, Schema, TensorSpec

    columns: list[ColSpec | TensorSpec] = [
        ColSpec(_MLFLOW_TYPES.get(field.dataType.simpleString().split("(")[0], "string"), field.name,
                required=not field.nullable)
        for field in schema.fields
    ]
    return Schema(columns)


@cache
def _source_class() -> type:
    from mlflow.data.delta_dataset_source import DeltaDatasetSource

    class VersionedDeltaSource(DeltaDatasetSource):  # type: ignore[misc]
        """MLflow's Delta source, whose JSON keeps a version of 0 (MLflow's tests truthiness)."""

        def to_dict(self) -> dict[Any, Any]:
            info: dict[Any, Any] = super().to_dict()
            if self.delta_table_version is not None:
                info["delta_table_version"] = self.delta_table_version
            return info

    return VersionedDeltaSource


@cache
def _dataset_class() -> type:
    from mlflow.data.spark_dataset import SparkDataset

    class DeltaTableDataset(SparkDataset):  # type: ignore[misc]
        """A ``SparkDataset`` whose profile is a known row count instead of an RDD job."""

        def __init__(self, *, rows: int | None, **kwargs: Any) -> None:
            self._rows = rows
            super().__init__(**kwargs)

        @property
        def profile(self) -> Any:
            return None if self._rows is None else {"num_rows": self._rows}

        @property
        def schema(self) -> Any:
            return mlflow_schema(self.df.schema)

    return DeltaTableDataset


@dataclass(frozen=True)
class DeltaInput:
    """A Delta table at one version, ready to be logged as a dataset input of any run."""

    dataset: Any
    context: str
    tags: dict[str, str]


def delta_input(
    spark: SparkSession,
    table: str,
    version: int,
    *,
    context: str,
    rows: int | None = None,
    targets: str | None = None,
) -> DeltaInput:
    """``table`` at ``version`` as a dataset input, with its name, version and path as tags."""
    dataset = delta_dataset(
        spark, table, version, table_id=tables.table_id(spark, table), rows=rows, targets=targets
    )
    source = dataset.source
    if source.delta_table_version != version or not source.delta_table_name.endswith(table):
        raise LineageError(
            f"MLflow recorded {source.delta_table_name}@{source.delta_table_version} "
            f"for {table}@v{version}"
        )
    tags = {INPUT_TABLE_TAG: table, INPUT_VERSION_TAG: str(version)}
    location = table_location(spark, table)
    if location:
        tags[INPUT_PATH_TAG] = location
    return DeltaInput(dataset, context, tags)


def training_inputs(spark: SparkSession, snapshot: TrainingSnapshot) -> tuple[DeltaInput, ...]:
    """Every table the training set was built from, then the training-set table itself.

    Built once per snapshot: each table costs a Delta read plan and a ``DESCRIBE
    DETAIL``, and a train logs the same inputs on the parent and on every child run.
    """
    sources = [
        delta_input(spark, table, version, context=SOURCE_CONTEXT)
        for table, version in sorted(snapshot.spec.inputs.items())
    ]
    # Each source is read at its version once: the check takes the datasets' frames.
    warn_unless_rebuildable(
        spark, snapshot.spec.inputs, ids=snapshot.spec.input_ids,
        frames={source.tags[INPUT_TABLE_TAG]: source.dataset.df for source in sources},
    )
    training = delta_input(
        spark, snapshot.table, snapshot.version, context=TRAINING_CONTEXT,
        rows=snapshot.rows, targets="churned",
    )
    return (*sources, training)


def log_training_lineage(snapshot: TrainingSnapshot, inputs: Sequence[DeltaInput]) -> None:
    """Log the :func:`training_inputs` and the training set's spec and content hash on the active run.

    Tags carry the spec and the content hash, so :func:`rebuild_training_set` needs
    nothing but the run id.
    """
    mlflow = mlflow_module()
    mlflow.log_inputs(
        datasets=[item.dataset for item in inputs],
        contexts=[item.context for item in inputs],
        tags_list=[item.tags for item in inputs],
    )
    mlflow.set_tags({
        SPEC_TAG: snapshot.spec.to_json(),
        HASH_TAG: snapshot.content_hash,
        TABLE_TAG: snapshot.table,
        VERSION_TAG: str(snapshot.version),
        ROWS_TAG: str(snapshot.rows),
    })
    mlflow.log_text(snapshot.spec.to_json(), "lineage/training_set_spec.json")


# --- reading a run back ----------------------------------------------------------------


def get_run(run_id: str) -> Run:
    """The run, or :class:`LineageError` saying the store has no such run or could not be asked."""
    mlflow = mlflow_module()
    try:
        return client().get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        store = shown_uri(mlflow.get_tracking_uri())
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise LineageError(f"no MLflow run {run_id!r} in {store}") from None
        # A store that is down, refuses the credentials or needs `mlflow db upgrade`.
        first = next(iter(str(err.message).strip().splitlines()), "") or type(err).__name__
        raise LineageError(
            f"could not look up MLflow run {run_id!r} in {store}: {shown_uri(first)}"
        ) from None


def logged_inputs(run: Run) -> tuple[LoggedInput, ...]:
    """The Delta tables the run logged as dataset inputs, with their versions."""
    found = []
    for item in run.inputs.dataset_inputs if run.inputs is not None else []:
        tags = {tag.key: tag.value for tag in item.tags}
        source = json.loads(item.dataset.source or "{}")
        table = tags.get(INPUT_TABLE_TAG) or source.get("delta_table_name")
        version = tags.get(INPUT_VERSION_TAG, source.get("delta_table_version"))
        if table is None or version is None:
            continue
        found.append(LoggedInput(
            table=table,
            version=int(version),
            path=tags.get(INPUT_PATH_TAG) or source.get("path"),
            context=tags.get("mlflow.data.context", ""),
        ))
    return tuple(found)


def lineage(run_id: str) -> Lineage:
    """The training-set lineage a run logged; :class:`LineageError` if it has none."""
    run = get_run(run_id)
    tags = run.data.tags
    if SPEC_TAG not in tags or HASH_TAG not in tags:
        raise LineageError(
            f"run {run_id} has no training-set lineage (tags {SPEC_TAG}, {HASH_TAG}); "
            "pass the run id `lakeward train` logged"
        )
    version = tags.get(VERSION_TAG)
    return Lineage(
        run_id=run_id,
        spec_json=tags[SPEC_TAG],
        content_hash=tags[HASH_TAG],
        table=tags.get(TABLE_TAG),
        version=None if version is None else int(version),
        inputs=logged_inputs(run),
    )


# --- rebuilding ------------------------------------------------------------------------


def warn_unless_rebuildable(
    spark: SparkSession,
    versions: Mapping[str, int],
    *,
    ids: Mapping[str, str] | None = None,
    frames: Mapping[str, DataFrame] | None = None,
) -> bool:
    """Warn, before a train logs them, when the input versions can no longer be read.

    Training on the table still works; only rebuilding its rows from the inputs,
    which the run promises, would fail. True when they can be read. ``ids`` are the
    Delta table ids the build read (a table made again since is refused, as rebuild
    refuses it); ``frames`` the tables already read at those versions, whose Delta
    state is not read again.
    """
    try:
        for table, version in sorted(versions.items()):
            tables.read_version(spark, table, version, expected_id=(ids or {}).get(table),
                                frame=(frames or {}).get(table))
    except Exception as gone:  # noqa: BLE001 - only a warning: the train goes on either way
        log.warning("the training set cannot be rebuilt from the versions it was built from "
                    "(rebuild-training-set would fail): %s", gone)
        return False
    return True


def rebuild_training_set(
    spark: SparkSession, settings: Settings, run_id: str, output: str | None = None
) -> RebuildResult:
    """Rebuild the run's training set from its logged Delta versions and check its content hash.

    With ``output`` the verified rows are written to ``<ml schema>.<output>``, with the
    spec, hash and run id as table properties. A mismatch or an input version that can
    no longer be read raises :class:`LineageError` naming the tables and versions.
    """
    from lakeward import training_set

    # A new process has no tracking URI yet; MLflow's default is a store in the cwd.
    configure_to_read(settings, run_id)
    target = None if output is None else training_set.table_name(settings, output)
    if target is not None:
        try:
            training_set.refuse_foreign_table(spark, target)
        except training_set.TrainingSetError as err:
            raise LineageError(f"--output: {err}") from None
    recorded = lineage(run_id)
    spec = training_set.BuildSpec.from_json(recorded.spec_json)
    logged = {item.table: item.version for item in recorded.inputs if item.context == SOURCE_CONTEXT}
    if logged and logged != dict(spec.inputs):
        raise LineageError(
            f"run {run_id} is inconsistent: its dataset inputs are {tables.describe_versions(logged)} "
            f"but its spec names {tables.describe_versions(spec.inputs)}"
        )
    where = tables.describe_versions(spec.inputs)
    try:
        # rebuild checks each input version is still readable before it reads any rows.
        rebuilt = training_set.rebuild(spark, settings, spec)
        digest = training_set.content_hash(rebuilt)
    except training_set.TrainingSetError as err:
        raise LineageError(f"run {run_id}: cannot rebuild its training set: {err}") from None
    except Exception as err:  # noqa: BLE001 - the time-travel read fails only when the rows are read
        raise LineageError(
            f"run {run_id}: reading the inputs at {where} failed: {one_line(err)}"
        ) from None
    if digest != recorded.content_hash:
        raise LineageError(
            f"run {run_id}: the training set rebuilt from {where} has content hash {digest}, "
            f"but the run logged {recorded.content_hash}"
        )
    log.info("rebuild: run %s: rebuilt from %s, content hash %s matches", run_id, where, digest)
    version = None
    if target is not None:
        version = _write_rebuilt(spark, rebuilt, target, recorded, digest)
        log.info("rebuild: wrote %s version %d", target, version)
    return RebuildResult(run_id, digest, dict(spec.inputs), target, version)


def _write_rebuilt(spark: SparkSession, rows: DataFrame, target: str, recorded: Lineage, digest: str) -> int:
    from lakeward import training_set

    # The columns are those of the run's spec, which today's config may no longer give;
    # the rows are about users all the same, so the table is marked as a training set is.
    spec = tables.TableSpec(target, rows.schema, subject_column=training_set.KEY)
    properties = {
        training_set.SPEC_PROPERTY: recorded.spec_json, training_set.CONTENT_HASH_PROPERTY: digest,
        "lakeward.rebuilt_from_run": recorded.run_id,
    }
    tables.replace(rows, spec, properties)
    return tables.current_version(spark, target)
