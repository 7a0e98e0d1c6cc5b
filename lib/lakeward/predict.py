"""``lakeward predict``: score one day's feature rows with a run's registered model.

The rows of ``gold.user_features`` with ``feature_date = D`` are scored by the model
``lakeward train`` registered for run R, and land in ``ml.predictions`` with the run
id, the model name and version. Re-running the same run and date replaces exactly that
slice in one MERGE (one commit), so it never duplicates and never leaves a half-written
slice::

    result = predict(spark, settings, run_id, date(2026, 2, 28))
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakeward import tables, tracking
from lakeward.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


class PredictionError(RuntimeError):
    """The run has no usable model or there is nothing to score."""


@dataclass(frozen=True)
class PredictResult:
    """What was written."""

    table: str
    version: int
    rows: int
    run_id: str
    model_name: str
    model_version: str


def predictions_spec(settings: Settings) -> tables.TableSpec:
    """``ml.predictions``: one churn score per user, feature date and run."""
    schema = T.StructType([
        T.StructField("user_key", T.StringType()),
        T.StructField("feature_date", T.DateType()),
        T.StructField("score", T.DoubleType()),
        T.StructField("run_id", T.StringType()),
        T.StructField("model_name", T.StringType()),
        T.StructField("model_version", T.StringType()),
        T.StructField("predicted_at", T.TimestampType()),
    ])
    return tables.TableSpec(settings.table("ml_predictions"), schema, subject_column="user_key")


@dataclass(frozen=True)
class _Model:
    name: str
    version: str
    pyfunc: Any
    features: list[str]
    feature_version: str | None


def _resolve_model(run_id: str) -> _Model:
    """The model the run registered; its signature names the feature columns, in order."""
    import json

    run = tracking.get_run(run_id)
    tags = run.data.tags
    name, version = tags.get(tracking.MODEL_NAME_TAG), tags.get(tracking.MODEL_VERSION_TAG)
    if not name or not version:
        raise PredictionError(
            f"run {run_id} has no registered model (tags {tracking.MODEL_NAME_TAG}, "
            f"{tracking.MODEL_VERSION_TAG}); pass the parent run id `lakeward train` logged"
        )
    _require_registered_by(run_id, name, version)
    with warnings.catch_warnings():
        # MLflow loads the TorchScript file through torch.load, which then defers to torch.jit.load.
        warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
        pyfunc = tracking.mlflow_module().pyfunc.load_model(f"models:/{name}/{version}")
    schema = pyfunc.metadata.get_input_schema()
    if schema is None:
        raise PredictionError(f"model {name} version {version} has no input signature")
    feature_version = None
    if tracking.SPEC_TAG in tags:
        feature_version = json.loads(tags[tracking.SPEC_TAG]).get("feature_version")
    return _Model(name, version, pyfunc, list(schema.input_names()), feature_version)


def _require_registered_by(run_id: str, name: str, version: str) -> None:
    """The registry's ``name`` version ``version`` must be the one the run registered.

    A run records the name and version, not the registry: with another
    ``tracking.registry_uri`` since, the same name and version may be another
    model, or none.
    """
    mlflow = tracking.mlflow_module()
    registry = tracking.shown_uri(mlflow.get_registry_uri())
    try:
        registered = tracking.client().get_model_version(name, version)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise PredictionError(
            f"run {run_id} registered model {name} version {version}, which the registry {registry} "
            "does not hold (was tracking.registry_uri another when the run trained?)"
        ) from None
    if run_id not in (registered.run_id, registered.tags.get(tracking.PARENT_RUN_TAG)):
        raise PredictionError(
            f"model {name} version {version} in the registry {registry} was not registered by run "
            f"{run_id} (was tracking.registry_uri another when the run trained?)"
        )


def score_frame(spark: SparkSession, settings: Settings, day: date, model: _Model) -> DataFrame:
    """The day's feature rows, checked against what the model was trained on, as Spark rows to score."""
    source = settings.table("gold_user_features")
    rows = tables.read(spark, source).filter(F.col("feature_date") == F.lit(day))
    missing = [name for name in model.features if name not in rows.columns]
    if missing:
        raise PredictionError(f"{source} lacks the model's feature columns {missing}")
    versions = [r[0] for r in rows.select("feature_version").distinct().collect()]
    if not versions:
        raise PredictionError(f"{source} has no rows with feature_date {day}")
    if model.feature_version is not None and versions != [model.feature_version]:
        raise PredictionError(
            f"{source} rows of {day} have feature_version {sorted(map(str, versions))} but the model "
            f"was trained on {model.feature_version}"
        )
    values = [F.col(name).cast("double").alias(name) for name in model.features]
    return rows.select("user_key", "feature_date", *values)


def predict(spark: SparkSession, settings: Settings, run_id: str, day: date) -> PredictResult:
    """Score ``day``'s feature rows with run ``run_id``'s model and write them to ``ml.predictions``."""
    tracking.configure_to_read(settings, run_id)
    model = _resolve_model(run_id)
    features: Any = score_frame(spark, settings, day, model).toPandas()
    output = model.pyfunc.predict(features[model.features])
    column = output.iloc[:, 0] if hasattr(output, "iloc") and output.ndim == 2 else output
    features["score"] = [float(value) for value in column]
    spec = predictions_spec(settings)
    scored = spark.createDataFrame(
        features[["user_key", "feature_date", "score"]],
        schema=T.StructType(spec.schema.fields[:3]),
    ).select(
        "user_key", "feature_date", "score",
        F.lit(run_id).alias("run_id"),
        F.lit(model.name).alias("model_name"),
        F.lit(model.version).alias("model_version"),
        # One instant for every row of the statement.
        F.current_timestamp().alias("predicted_at"),
    )
    tables.ensure_table(spark, spec)
    _replace_slice(spark, spec.name, scored, run_id, day)
    version = tables.current_version(spark, spec.name)
    log.info("predict: %d rows of %s scored by %s version %s (run %s) -> %s version %d",
             len(features), day, model.name, model.version, run_id, spec.name, version)
    return PredictResult(spec.name, version, len(features), run_id, model.name, model.version)


def _replace_slice(spark: SparkSession, name: str, scored: DataFrame, run_id: str, day: date) -> None:
    """Upsert the slice (run, day) and delete its rows that are no longer scored, in one commit."""
    from delta.tables import DeltaTable

    target = DeltaTable.forName(spark, name).alias("t")
    same_row = ((F.col("t.user_key") == F.col("s.user_key"))
                & (F.col("t.run_id") == F.col("s.run_id"))
                & (F.col("t.feature_date") == F.col("s.feature_date")))
    in_slice = (F.col("t.run_id") == F.lit(run_id)) & (F.col("t.feature_date") == F.lit(day))
    (
        target.merge(scored.alias("s"), same_row)
        .whenMatchedUpdate(set=tables.merge_source(scored))
        .whenNotMatchedInsert(values=tables.merge_source(scored))
        .whenNotMatchedBySourceDelete(condition=in_slice)
        .execute()
    )
