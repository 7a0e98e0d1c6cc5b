"""Typed settings: ``conf/base.yml`` with ``conf/<env>.yml`` merged over it.

Raw YAML becomes validated :class:`Settings` once, here; everything downstream
takes typed settings. An unknown key or a wrong type fails with
:class:`ConfigError` naming the file, the key and what was expected::

    settings = load_settings("local")
    settings.table("silver_orders")      # -> "silver.orders"
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENVIRONMENTS = ("local", "dev", "prod")
ENV_VAR = "LAKEWARD_ENV"
HOME_VAR = "LAKEWARD_HOME"
# Hadoop's glob characters: a path holding one is read as a pattern.
_GLOB_CHARACTERS = "*?[]{}\\"
CONF_DIR_VAR = "LAKEWARD_CONF_DIR"
# Settings lakeward sets itself when it loads the files; a file may not set them.
DERIVED_KEYS = ("env", "conf_dir")
# The logical table names the code asks ``Settings.table`` for; config maps each to a name.
TABLE_KEYS = (
    "bronze_order_placed", "bronze_delivery_completed", "bronze_rating_submitted", "bronze_users",
    "bronze_quarantine", "silver_orders", "silver_deliveries", "silver_ratings", "silver_users",
    "silver_quarantine", "gold_user_daily", "gold_user_features", "ops_ingestion_batches",
    "ops_quality_results", "ops_silver_batches", "ops_training_sets", "ops_gold_runs",
    "ml_training_set", "ml_predictions",
)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_identifier(name: str) -> bool:
    """Whether ``name`` is a plain SQL identifier, safe to quote into a statement."""
    return _IDENTIFIER.fullmatch(name) is not None


class ConfigError(ValueError):
    """Configuration that cannot be loaded or does not validate."""


TIME_ZONE_CONF = "spark.sql.session.timeZone"


# Java's names of UTC (ZoneId.SHORT_IDS aside), and a zero offset in the forms Java's
# ZoneOffset reads, bare or after UTC, GMT or UT: +00, +0000, +00:00, +00:00:00, -0.
_UTC_NAMES = frozenset({
    "Z", "UTC", "GMT", "UT", "UCT", "GMT0", "Greenwich", "Universal", "Zulu",
    "Etc/UTC", "Etc/UCT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0", "Etc/Greenwich",
    "Etc/Universal", "Etc/Zulu",
})
_ZERO_OFFSET = re.compile(r"(?:UTC|GMT|UT)?[+-]0{1,2}(?::?00(?::?00)?)?")


def is_utc(zone: str) -> bool:
    """Whether Spark's session time zone ``zone`` is UTC by another name (``Etc/UTC``, ``+00:00``)."""
    return zone in _UTC_NAMES or _ZERO_OFFSET.fullmatch(zone) is not None


def parse_iso_date(text: str) -> date:
    """``YYYY-MM-DD`` as a date; ValueError for anything else.

    ``date.fromisoformat`` alone also reads 20260105 and 2026-W01-1, which are not the
    documented form.
    """
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ValueError(f"expected a date as YYYY-MM-DD, got {text!r}")
    return date.fromisoformat(text)


def _iso_date(value: Any) -> Any:
    """A date written as text (``"2026-01-01"``) as a date; anything else as it came."""
    if isinstance(value, str):
        try:
            return parse_iso_date(value)
        except ValueError:
            raise ValueError("expected a date, YYYY-MM-DD") from None
    return value


# YAML reads an unquoted date as a date and a quoted one as text; both mean the same.
IsoDate = Annotated[date, BeforeValidator(_iso_date)]


def _spark_conf_text(conf: Any) -> Any:
    """Numbers and booleans among Spark conf values as the text Spark reads, as its builder sends them.

    Spark's conf holds text only; ``spark.sql.shuffle.partitions: 8`` means "8",
    and ``true`` "true" (not Python's "True"). Anything else is left to the strict check.
    """
    if not isinstance(conf, dict):
        return conf
    return {key: _conf_value_text(value) for key, value in conf.items()}


def _conf_value_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return value


class _Strict(BaseModel):
    # strict: YAML's true is not an integer, nor "7" a number. Paths and tuples are
    # marked lax one by one, since YAML has only text and lists for them. YAML's .nan
    # and .inf are no setting's value: NaN passes every comparison a check makes.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SparkSettings(_Strict):
    """How the SparkSession is obtained."""

    mode: Literal["local", "cluster", "databricks"] = "local"
    """local: build ``master`` here; cluster: spark-submit decides; databricks: active session."""
    master: str = "local[*]"
    app_name: str = "lakeward"
    ui: bool = False
    conf: Annotated[dict[str, str], BeforeValidator(_spark_conf_text)] = Field(default_factory=dict)
    """Extra Spark conf applied when the session is built (numbers and booleans as Spark's text)."""
    driver_java_options: list[str] = Field(default_factory=list)
    """JVM options for the driver lakeward starts itself (local mode, outside spark-submit)."""
    class_data_sharing: bool = True
    """Start that driver JVM with a class-data-sharing archive, made on first use."""
    class_data_dir: Path | None = Field(None, strict=False)
    """Where the archive is kept; None: ``var/lakeward`` in the virtual environment."""

    @field_validator("conf")
    @classmethod
    def _utc_sessions(cls, conf: dict[str, str]) -> dict[str, str]:
        zone = conf.get(TIME_ZONE_CONF)
        if zone is not None and not is_utc(zone):
            raise ValueError(f"{TIME_ZONE_CONF}: expected UTC, in which lakeward dates events and features "
                             f"(found {zone!r})")
        return conf

    @field_validator("driver_java_options")
    @classmethod
    def _options_are_flags(cls, options: list[str]) -> list[str]:
        malformed = [option for option in options if not option.startswith("-") or " " in option]
        if malformed:
            raise ValueError(f"expected one JVM option per item, each starting with '-', got {malformed}")
        # Each item reaches the JVM as written, quotes and backslashes included.
        return options


class PrivacySettings(_Strict):
    """Pseudonymization key handling."""

    pii_key_env: str = "LAKEWARD_PII_KEY"
    """The environment variable that holds the key."""
    generate_key_if_missing: bool = False
    """Only for local work: create a key under the data root when the variable is unset."""

    @field_validator("pii_key_env")
    @classmethod
    def _variable_name(cls, value: str) -> str:
        if not is_identifier(value):
            raise ValueError("expected the name of an environment variable")
        return value


class PipelineSettings(_Strict):
    """Rules the medallion jobs apply."""

    allowed_lateness_days: int = Field(7, ge=0)
    future_tolerance_hours: int = Field(1, ge=0)
    max_amount: float = Field(1000.0, gt=0)
    feature_version: str = "v1"
    feature_windows_days: tuple[int, ...] = Field((7, 30, 90), strict=False)
    gold_rows_per_file: int = Field(250_000, gt=0)

    @field_validator("feature_windows_days")
    @classmethod
    def _positive_windows(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(days <= 0 for days in value):
            raise ValueError("expected a non-empty list of positive day counts")
        return tuple(sorted(set(value)))


class QualitySettings(_Strict):
    """Where data contracts live (relative to the conf directory, or absolute)."""

    contracts_dir: str = "contracts"


class FaultSettings(_Strict):
    """Fault rates the generator injects (0 disables a fault)."""

    duplicate: float = Field(0.02, ge=0, le=1)
    late: float = Field(0.03, ge=0, le=1)
    malformed: float = Field(0.005, ge=0, le=1)
    null_key: float = Field(0.005, ge=0, le=1)
    out_of_range: float = Field(0.005, ge=0, le=1)
    schema_drift: bool = True

    @model_validator(mode="after")
    def _one_fault_per_line(self) -> FaultSettings:
        # The three are exclusive per line (FaultRates): together they can fault every line at most.
        together = self.malformed + self.null_key + self.out_of_range
        if together > 1:
            raise ValueError(f"malformed + null_key + out_of_range must not exceed 1; got {together:g}")
        return self


class GeneratorSettings(_Strict):
    """Defaults for ``lakeward generate``."""

    faults: FaultSettings = Field(default_factory=FaultSettings)
    # "snapshot": each day's users file holds every user signed up by then;
    # "changes": only the users records that changed that day.
    users_feed: Literal["snapshot", "changes"] = "snapshot"


class DemoSettings(_Strict):
    """Size of the data set ``lakeward demo`` generates."""

    seed: int = 7
    users: int = Field(3000, gt=0)
    days: int = Field(60, gt=0)
    start: IsoDate = date(2026, 1, 1)


class TrainingSetSettings(_Strict):
    """How ``lakeward training-set`` builds ``ml.training_set``; the command line overrides it."""

    horizon_days: int = Field(30, gt=0)
    """Churn label window ``(t, t + horizon]``; also the gap between temporal split parts."""
    ttl_days: int | None = Field(3, ge=0)
    """Oldest feature row (in days before the label) the as-of join takes; ``None``: no limit."""
    split: Literal["group", "temporal"] = "group"
    """``group``: users hashed into parts; ``temporal``: train < t1 <= validation < t2 <= test."""
    fractions: tuple[float, float, float] = Field((0.7, 0.15, 0.15), strict=False)
    """Train, validation, test: shares of users (group), or of the label time range left after
    the two gaps when temporal bounds are computed."""
    seed: int = 7
    """Seed of the group split's hash."""
    t1: IsoDate | None = None
    """Temporal split: first day of validation (UTC midnight); ``None``: computed from the labels."""
    t2: IsoDate | None = None
    """Temporal split: first day of test; given together with ``t1`` or not at all."""

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(share < 0 for share in value) or abs(sum(value) - 1) > 1e-9:
            raise ValueError("expected three non-negative shares summing to 1")
        return value

    @model_validator(mode="after")
    def _bounds_together(self) -> TrainingSetSettings:
        if (self.t1 is None) != (self.t2 is None):
            raise ValueError("t1 and t2 are given together or not at all")
        if self.t1 is not None and self.t2 is not None:
            if not self.t1 < self.t2:
                raise ValueError(f"expected t1 < t2, got {self.t1} and {self.t2}")
            # The gap between parts is the horizon: validation labels need time to end before t2.
            if (self.t2 - self.t1).days <= self.horizon_days:
                raise ValueError(
                    f"t2 - t1 ({(self.t2 - self.t1).days} days) must be longer than horizon_days "
                    f"({self.horizon_days}), the gap between the parts: no validation label's "
                    "window would end before t2"
                )
        return self


class TrackingSettings(_Strict):
    """Where MLflow runs, artifacts and registered models go."""

    uri: str | None = None
    """Remote tracking URI (``http(s)://...``, ``databricks``, a database URL). ``None``:
    SQLite at ``<data_root>/mlflow/mlflow.db`` with artifacts under ``<data_root>/mlflow/artifacts``."""
    artifact_location: str | None = None
    """Artifact root of the experiment when lakeward creates it. ``None``: the server decides for
    http(s) and Databricks URIs, ``<data_root>/mlflow/artifacts`` for every other URI."""
    registry_uri: str | None = None
    """Where models are registered. ``None``: the tracking store itself, except for a Databricks
    workspace (``databricks``, ``databricks://<profile>``), where it is Unity Catalog
    (``databricks-uc``), as MLflow itself picks by default."""
    experiment: str = "lakeward-churn"
    """Experiment every training run is logged to (on Databricks, a workspace path)."""
    registered_model: str = "lakeward_churn"
    """Registry name of the model each ``lakeward train`` registers (in Unity Catalog,
    ``catalog.schema.model``)."""

    @model_validator(mode="after")
    def _databricks_names(self) -> TrackingSettings:
        if self.uri is not None and is_databricks(self.uri) and not self.experiment.startswith("/"):
            raise ValueError(
                "experiment: a Databricks workspace names experiments by their path, such as "
                f"/Shared/{self.experiment} (found {self.experiment!r})"
            )
        registry = self.registry_uri or (default_registry(self.uri) if self.uri is not None else "")
        unity_catalog = registry == "databricks-uc" or registry.startswith("databricks-uc://")
        if unity_catalog and not re.fullmatch(r"[^.\s]+\.[^.\s]+\.[^.\s]+", self.registered_model):
            raise ValueError(
                "registered_model: Unity Catalog names a model catalog.schema.model "
                f"(found {self.registered_model!r}); set tracking.registry_uri to register elsewhere"
            )
        return self


def default_registry(tracking_uri: str) -> str:
    """Where models go when ``tracking.registry_uri`` is not set.

    The tracking store itself, or for a Databricks workspace Unity Catalog (of the
    same profile), as MLflow picks by default.
    """
    if is_databricks(tracking_uri):
        return "databricks-uc" + tracking_uri.removeprefix("databricks")
    return tracking_uri


def is_databricks(uri: str) -> bool:
    """Whether a tracking URI names a Databricks workspace, as MLflow reads it."""
    return uri == "databricks" or uri.startswith("databricks://")


# Beyond it a bound of e**epsilon says nothing, and Opacus's search for the noise level
# reaching it runs the accountant at vanishing noise, where it overflows and never ends
# (an epsilon of 1000 ran for minutes; 200 took 3.5 s).
MAX_EPSILON = 100.0


class TrainingSettings(_Strict):
    """Defaults of ``lakeward train`` and ``lakeward dp-sweep``; the command line overrides them."""

    model: Literal["logreg", "mlp"] = "logreg"
    """``logreg``: one linear layer; ``mlp``: one hidden layer of ``hidden_units``."""
    hidden_units: int = Field(32, gt=0)
    """Width of the hidden layer of ``mlp``."""
    epochs: int = Field(10, gt=0)
    """Passes over the train split (the DP accountant counts every step of them)."""
    batch_size: int = Field(256, gt=0)
    """Expected batch size; under DP the sample rate is ``1 / ceil(train rows / batch_size)``."""
    learning_rate: float = Field(0.003, gt=0)
    """Adam learning rate, the same for the DP model and its twin."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Per-sample gradient clipping norm C of DP-SGD."""
    epsilon: float = Field(3.0, gt=0, le=MAX_EPSILON)
    """Target epsilon of DP-SGD."""
    delta: float | None = Field(None, gt=0, lt=1)
    """Target delta; ``None``: ``1 / (10 * train rows)``, safely below ``1 / N``."""
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Seeds torch, sampling and the baseline, so a run repeats exactly on CPU (numpy's and
    scikit-learn's range: 0 to 2**32 - 1)."""
    accountant: Literal["prv", "rdp"] = "prv"
    """Opacus privacy accountant: ``prv`` (tighter) or ``rdp`` (Renyi DP)."""
    sweep_epsilons: tuple[float, ...] = Field((0.5, 1.0, 2.0, 4.0, 8.0), strict=False)
    """Epsilons ``lakeward dp-sweep`` trains when ``--epsilons`` is not given."""

    @field_validator("sweep_epsilons")
    @classmethod
    def _positive_epsilons(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0 < eps <= MAX_EPSILON for eps in value):
            raise ValueError(f"expected a non-empty list of epsilons above 0 and at most {MAX_EPSILON:g}")
        return tuple(sorted(set(value)))


class Settings(_Strict):
    """All lakeward settings for one environment."""

    env: str = "local"
    data_root: Path = Field(Path(".lakeward"), strict=False)
    conf_dir: Path = Field(Path("conf"), strict=False)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    demo: DemoSettings = Field(default_factory=DemoSettings)
    training_set: TrainingSetSettings = Field(default_factory=TrainingSetSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    tables: dict[str, str] = Field(default_factory=dict)

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(TABLE_KEYS))
        if unknown:
            raise ValueError(
                f"unknown table(s) {', '.join(unknown)}; expected names from {', '.join(TABLE_KEYS)}"
            )
        missing = [key for key in TABLE_KEYS if key not in value]
        if missing:
            raise ValueError(f"no name for {', '.join(missing)}")
        # schema.table, or catalog.schema.table (Unity Catalog); each part a plain identifier.
        malformed = sorted(
            f"{key}: {name!r}" for key, name in value.items()
            if not 2 <= len(name.split(".")) <= 3 or not all(map(is_identifier, name.split(".")))
        )
        if malformed:
            raise ValueError(
                f"expected schema.table or catalog.schema.table names, found {'; '.join(malformed)}"
            )
        return value

    def table(self, logical: str) -> str:
        """Return the configured table name for a logical name such as ``silver_orders``."""
        try:
            return self.tables[logical]
        except KeyError:
            raise ConfigError(
                f"no table configured for {logical!r}; configured: {sorted(self.tables)}"
            ) from None

    def with_schema_suffix(self, suffix: str) -> Settings:
        """These settings with every table in ``<schema>_<suffix>``: a table set of its own.

        Tests and benchmarks use it to write fresh tables beside others in one catalog.
        """
        renamed = {}
        for logical, name in self.tables.items():
            # The schema is the part before the table's name (a catalog may come before it).
            schema, dot, table = name.rpartition(".")
            if not dot or not is_identifier(f"{schema.rpartition('.')[2]}_{suffix}"):
                raise ConfigError(f"tables.{logical}: {name!r} cannot take the schema suffix {suffix!r}")
            renamed[logical] = f"{schema}_{suffix}.{table}"
        return self.model_copy(update={"tables": renamed})

    @property
    def env_file(self) -> Path:
        """The environment's overlay, ``<conf_dir>/<env>.yml``."""
        return self.conf_dir / f"{self.env}.yml"

    @property
    def landing_dir(self) -> Path:
        """Raw landing files, one folder per source."""
        return self.data_root / "landing"

    @property
    def warehouse_dir(self) -> Path:
        """Managed Delta tables."""
        return self.data_root / "warehouse"

    @property
    def metastore_dir(self) -> Path:
        """The persistent catalog (Derby metastore) for local sessions."""
        return self.data_root / "metastore"

    @property
    def mlflow_dir(self) -> Path:
        """The local MLflow store: ``mlflow.db`` and ``artifacts/``."""
        return self.data_root / "mlflow"

    @property
    def plots_dir(self) -> Path:
        """Plots lakeward draws (for example the DP sweep)."""
        return self.data_root / "plots"

    @property
    def contracts_dir(self) -> Path:
        """Data contracts; a relative ``quality.contracts_dir`` is taken from the conf directory."""
        path = Path(self.quality.contracts_dir)
        return path if path.is_absolute() else self.conf_dir / path


def default_conf_dir() -> Path:
    """``conf/`` of the project.

    ``LAKEWARD_CONF_DIR``, else the one beside ``lib/`` (a checkout or an
    editable install), else the copy a regular install puts under
    ``<prefix>/share/lakeward/conf``.
    """
    override = os.environ.get(CONF_DIR_VAR)
    if override:
        return Path(override)
    beside_lib = Path(__file__).resolve().parents[2] / "conf"
    if beside_lib.is_dir():
        return beside_lib
    return _installed_conf_dir() or beside_lib


def _installed_conf_dir() -> Path | None:
    """Where the installed distribution put its copy of ``conf/``, if it did."""
    try:
        distribution = metadata.distribution("lakeward")
    except metadata.PackageNotFoundError:
        return None
    for file in distribution.files or []:
        if file.as_posix().endswith("share/lakeward/conf/base.yml"):
            located = Path(str(file.locate())).resolve()
            if located.is_file():
                return located.parent
    # `pip install --target T` puts the data files in T/share, though RECORD points above T.
    beside = Path(str(distribution.locate_file(""))).resolve() / "share" / "lakeward" / "conf"
    return beside if (beside / "base.yml").is_file() else None


def _check_data_root(root: Path) -> None:
    """Refuse a data root Spark, Hadoop or the local catalog cannot use, or that cannot be made."""
    if ":" in str(root):
        # Hadoop reads a path with a colon as a URI with a scheme, and fails late.
        raise ConfigError(
            f"data root {root} has a ':' in it, which Spark and Hadoop cannot take "
            f"in a path; set {HOME_VAR} (or data_root) to a directory without one"
        )
    pattern = sorted(set(str(root)) & set(_GLOB_CHARACTERS))
    if pattern:
        # Spark reads files by a pattern of these: bronze would find no landing file.
        raise ConfigError(
            f"data root {root} has {' '.join(repr(c) for c in pattern)} in it, which "
            f"Spark reads as a file name pattern; set {HOME_VAR} (or data_root) to a directory "
            f"without any of {' '.join(_GLOB_CHARACTERS)}"
        )
    if ";" in str(root):
        # The local catalog's JDBC URL holds the path, and Derby reads a ';' as the start of an option.
        raise ConfigError(
            f"data root {root} has a ';' in it, which the local catalog (Derby) "
            f"cannot take in a path; set {HOME_VAR} (or data_root) to a directory without one"
        )
    # The root, or the nearest of its parents that exists (where it will be made).
    try:
        existing = next(p for p in [root, *root.parents] if p.exists())
    except OSError as err:  # a parent the user may not look into
        raise ConfigError(
            f"data root {root}: {err.strerror} ({err.filename}); "
            f"set {HOME_VAR} (or data_root) to a directory you can use"
        ) from None
    if not existing.is_dir():
        raise ConfigError(
            f"data root {root} is not a directory"
            + ("" if existing == root else f" ({existing} is a file)")
            + f"; set {HOME_VAR} (or data_root) to a directory"
        )


def load_settings(
    env: str | None = None,
    *,
    conf_dir: Path | None = None,
    data_root: Path | None = None,
) -> Settings:
    """Load ``base.yml`` and the environment overlay into validated settings.

    ``env`` defaults to ``LAKEWARD_ENV`` or ``local``; ``data_root`` defaults to
    ``LAKEWARD_HOME`` or the ``data_root`` key.
    """
    named_by = ""
    if env is None:  # `--env ""` is a choice, and not one of the environments
        env, named_by = os.environ.get(ENV_VAR) or "local", f" (from {ENV_VAR})"
    if env not in ENVIRONMENTS:
        raise ConfigError(
            f"unknown environment {env!r}{named_by}; expected one of {', '.join(ENVIRONMENTS)}"
        )
    conf_dir = (conf_dir or default_conf_dir()).resolve()
    base_file = conf_dir / "base.yml"
    env_file = conf_dir / f"{env}.yml"
    for needed in (base_file, env_file):
        # A missing overlay would quietly run prod with base's (local) settings.
        if not needed.is_file():
            raise ConfigError(
                f"{needed}: not found; set {CONF_DIR_VAR} to a directory that holds base.yml and "
                f"{', '.join(f'{name}.yml' for name in ENVIRONMENTS)} (an overlay may be empty)"
            )
    base = read_yaml(base_file)
    overlay = read_yaml(env_file)
    merged = _deep_merge(base, overlay)

    def source(loc: list[str | int]) -> Path:
        """The file whose value at ``loc`` the merge kept: the overlay's, if it sets one."""
        return env_file if _sets(overlay, base, loc) else base_file

    derived = [
        f"{source([key])}: {key}: unknown key; set by lakeward "
        f"(--env / {ENV_VAR} and the conf directory), not in a config file"
        for key in DERIVED_KEYS if key in merged
    ]
    if derived:
        raise ConfigError("; ".join(derived))
    configured_root = merged.get("data_root")
    if configured_root is None:  # absent, or `data_root:` left empty
        configured_root = str(Settings.model_fields["data_root"].default)
    if not isinstance(configured_root, str) or not configured_root:
        raise ConfigError(f"{source(['data_root'])}: data_root: expected a path (found {configured_root!r})")
    merged["env"] = env
    merged["conf_dir"] = conf_dir
    root = data_root or os.environ.get(HOME_VAR) or configured_root
    merged["data_root"] = Path(root).expanduser().resolve()
    _check_data_root(merged["data_root"])
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as err:
        derived_values = {key: merged[key] for key in ("env", "conf_dir", "data_root")}
        faults_of_base = _faults({**base, **derived_values})

        def blame(loc: list[str | int], message: str) -> Path:
            # A check of a whole section both files set part of (the tables, the fault
            # rates) refuses a value of either: the base's, if the base alone fails it so.
            if _merges_both(overlay, base, loc):
                return base_file if (tuple(loc), message) in faults_of_base else env_file
            return source(loc)

        raise ConfigError(_describe(err, blame)) from None
    if env == "prod" and settings.privacy.generate_key_if_missing:
        # The key decides every user_key: production takes it from its secret store, never a file.
        raise ConfigError(
            f"{source(['privacy', 'generate_key_if_missing'])}: privacy.generate_key_if_missing: "
            "expected false; the prod environment takes the pseudonymization key from the environment only"
        )
    return settings


class _KeyError(yaml.constructor.ConstructorError):
    """A key that is valid YAML but no name (``7:``, ``true:``), which no file here may have."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping, or one that is not text.

    Plain YAML keeps the last of two equal keys, so a section written twice
    would silently lose the first one's settings.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self._check_keys(node, deep)
        return super().construct_mapping(node, deep)  # type: ignore[no-untyped-call,no-any-return]

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        """A date YAML cannot make (2026-02-30) stays text, so the check of its key names it."""
        try:
            return super().construct_yaml_timestamp(node)  # type: ignore[no-untyped-call]
        except ValueError:
            return self.construct_scalar(node)  # type: ignore[no-untyped-call]

    def _check_keys(self, node: yaml.MappingNode, deep: bool) -> None:
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # ``<<: *anchor`` or ``<<: {...}``: the base class merges it, and keys given
                # here win; a mapping written in place is merged without passing through here.
                merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for mapping in merged:
                    if isinstance(mapping, yaml.MappingNode):
                        self._check_keys(mapping, deep)
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, str):  # YAML reads 7, true or null as such, not as names
                raise _KeyError(None, None, f"key {key!r} is not text; keys are names", key_node.start_mark)
            if key in seen:  # the YAML spec has keys unique; PyYAML keeps the last
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark
                )
            seen.add(key)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:timestamp", _UniqueKeyLoader.construct_yaml_timestamp)


def read_yaml(path: Path) -> dict[str, Any]:
    """A config or contract file as a mapping; :class:`ConfigError` naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except _KeyError as err:
        raise ConfigError(f"{path}: {_one_line(err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None
    except ValueError as err:
        # A scalar YAML's own constructors fail on, such as 0x_ for a number.
        raise ConfigError(f"{path}: a value YAML cannot read: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def _one_line(err: yaml.YAMLError) -> str:
    """YAML's error on one line: what went wrong and where (its own text spans several lines)."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return " ".join(str(err).split())
    what = "; ".join(part for part in (err.context, err.problem) if part)
    mark = err.problem_mark or err.context_mark
    return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark else what


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _faults(values: dict[str, Any]) -> set[tuple[tuple[str | int, ...], str]]:
    """Where ``values`` fail validation as settings, and how."""
    try:
        Settings.model_validate(values)
    except ValidationError as err:
        return {(tuple(problem["loc"]), problem["msg"]) for problem in err.errors()}
    return set()


def _describe(err: ValidationError, source: Callable[[list[str | int], str], Path]) -> str:
    """One ``file: key: what was expected`` per problem; ``source`` names the file per key."""
    lines = []
    for problem in err.errors():
        loc = list(problem["loc"])
        key = ".".join(str(part) for part in loc)
        if problem["type"] == "extra_forbidden":
            allowed = _keys_at(Settings, loc[:-1])
            what = "unknown key" + (f"; expected one of {', '.join(allowed)}" if allowed else "")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            # A section's own check names its entries; the whole section would bury them.
            found = "" if isinstance(problem.get("input"), dict) else f" (found {problem.get('input')!r})"
            what = message + found
        lines.append(f"{source(loc, problem['msg'])}: {key}: {what}")
    return "; ".join(lines)


def _sets(overlay: Any, base: Any, loc: list[str | int]) -> bool:
    """Whether ``overlay`` sets the value at ``loc`` (keys and list indexes) of its merge with ``base``.

    It does when it holds that value, and also when it holds a value on the
    way that the merge takes whole: a list, a scalar, or a mapping where the
    base has none. So a list item the base has and the overlay's list lacks is
    the overlay's doing.
    """
    for part in loc:
        if not isinstance(overlay, dict):
            return True
        if part not in overlay:
            return False
        overlay = overlay[part]
        base = base.get(part) if isinstance(base, dict) else None
        if isinstance(overlay, dict) and not isinstance(base, dict):
            return True
    return True


def _merges_both(overlay: Any, base: Any, loc: list[str | int]) -> bool:
    """Whether the value at ``loc`` is a mapping both files set part of."""
    for part in loc:
        if not (isinstance(overlay, dict) and isinstance(base, dict)):
            return False
        overlay, base = overlay.get(part), base.get(part)
    return isinstance(overlay, dict) and isinstance(base, dict)


def _keys_at(model: type[BaseModel], loc: list[str | int]) -> list[str]:
    """The keys a config file may set at ``loc``, which names nested sections of ``model``."""
    for part in loc:
        field_info = model.model_fields.get(str(part))
        section = field_info.annotation if field_info is not None else None
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return []
        model = section
    return [name for name in model.model_fields if name not in DERIVED_KEYS]
