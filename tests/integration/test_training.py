"""Training, lineage, rebuilds and predictions against real Delta tables and a real SQLite MLflow store.

One module-scoped training run on a small training set (built by lakeward.training_set
from hand-written silver orders and gold features) serves the read-only checks. Tests
that change tables or runs make their own.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from lakeward import tables, tracking
from lakeward.config import Settings
from lakeward.train import (
    TWIN,
    TrainingSetMissingError,
    TrainSummary,
    open_training_set,
    train,
    with_overrides,
)
from tests.conftest import isolated
from tests.ml_data import RAW_IDS, append_orders, order_rows, user_key, write_inputs
from tests.pipeline_checks import drop_table, vacuum_everything_old

pytestmark = pytest.mark.training

USERS = 160


def with_store(settings: Settings, store: Path) -> Settings:
    """Settings whose MLflow store is ``store`` (one SQLite database for the module)."""
    options = settings.tracking.model_copy(update={
        "uri": f"sqlite:///{store / 'mlflow.db'}", "artifact_location": (store / "artifacts").as_uri(),
    })
    return settings.model_copy(update={"tracking": options})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def trained(spark: SparkSession, base_settings: Settings, store: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, TrainSummary]]:
    from lakeward import training_set

    root = tmp_path_factory.mktemp("train-home")
    settings = with_store(isolated(base_settings, root), store)
    settings = with_overrides(settings, epochs=2, batch_size=64, epsilon=3.0)
    write_inputs(spark, settings, users=USERS)
    training_set.build(spark, settings)
    cwd = Path.cwd()
    os.chdir(root)  # so a stray ./mlruns would show up here
    try:
        yield settings, train(spark, settings, dp=True)
    finally:
        os.chdir(cwd)


def client(settings: Settings):  # noqa: ANN201 - MlflowClient, imported lazily
    tracking.configure(settings)
    return tracking.client()


def test_dp_run_logs_privacy_and_compares_with_twin_and_baseline(trained) -> None:
    settings, summary = trained
    assert set(summary.results) == {"dp", "non_private", "sklearn_logreg"}
    mlflow = client(settings)
    dp = mlflow.get_run(summary.results["dp"].run_id)
    params, metrics = dp.data.params, dp.data.metrics
    assert params["dp.accountant"] == "prv" and params["dp.poisson_sampling"] == "true"
    assert float(params["dp.noise_multiplier"]) > 0 and float(params["dp.max_grad_norm"]) == 1.0
    train_rows = int(mlflow.get_run(summary.parent_run_id).data.params["rows.train"])
    assert float(params["dp.sample_rate"]) == pytest.approx(1 / -(-train_rows // 64))
    assert float(params["dp.delta"]) < 1 / train_rows and params["dp.epochs"] == "2"
    assert metrics["dp_epsilon_spent"] <= 3.0
    # Scored on validation and test only; what epsilon does not cover is said.
    assert not [key for key in metrics if key.startswith("train_")]
    assert "not private" in params["dp.preprocessing"]
    parent = mlflow.get_run(summary.parent_run_id).data
    for kind, run in summary.results.items():
        child = mlflow.get_run(run.run_id)
        assert child.data.tags["mlflow.parentRunId"] == summary.parent_run_id
        for split in ("validation", "test"):
            for name in ("roc_auc", "pr_auc", "log_loss", "brier"):
                logged = child.data.metrics[f"{split}_{name}"]
                assert logged == pytest.approx(run.metrics[f"{split}_{name}"])
                assert 0 <= logged <= (math.inf if name == "log_loss" else 1)
        # The parent's comparison holds each child's own numbers.
        assert parent.metrics[f"{kind}_test_roc_auc"] == child.data.metrics["test_roc_auc"]
    assert parent.metrics["dp_epsilon_spent"] == metrics["dp_epsilon_spent"]
    twin, dp_auc = summary.results["non_private"].metrics["test_roc_auc"], metrics["test_roc_auc"]
    assert parent.metrics["dp_test_roc_auc_gap"] == pytest.approx(twin - dp_auc)
    # The DP model is the one registered, and the registry knows which run it came from.
    version = mlflow.get_model_version(settings.tracking.registered_model, summary.model_version)
    assert version.run_id == summary.results["dp"].run_id
    assert version.tags["lakeward.parent_run_id"] == summary.parent_run_id


def test_every_run_records_inputs_with_delta_versions_config_and_code(trained, spark: SparkSession) -> None:
    settings, summary = trained
    mlflow = client(settings)
    registered = mlflow.get_model_version(settings.tracking.registered_model, summary.model_version)
    run_ids = [summary.parent_run_id, *(result.run_id for result in summary.results.values())]
    assert registered.run_id in run_ids
    orders, features = settings.table("silver_orders"), settings.table("gold_user_features")
    for run_id in run_ids:
        run = mlflow.get_run(run_id)
        logged = {item.table: item for item in tracking.logged_inputs(run)}
        spec = json.loads(run.data.tags[tracking.SPEC_TAG])
        assert {orders, features, summary.training_set.table} == set(logged)
        for table in (orders, features):
            assert logged[table].version == spec["inputs"][table] == tables.current_version(spark, table)
            assert logged[table].context == "source" and logged[table].path.endswith(table.split(".")[1])
        assert logged[summary.training_set.table].version == summary.training_set.version
        # MLflow's own record of each input names the table and its version, 0 included.
        for item in run.inputs.dataset_inputs:
            source = json.loads(item.dataset.source)
            table = source["delta_table_name"].removeprefix("spark_catalog.")
            assert source["delta_table_version"] == logged[table].version
        assert run.data.tags[tracking.HASH_TAG] == summary.training_set.content_hash
        assert run.data.params["training.epochs"] == "2"
        # The set's build values, from its spec, whatever the config says now.
        assert run.data.params["pipeline.feature_version"] == spec["feature_version"]
        assert run.data.params["training_set.split"] == spec["split"]
        assert run.data.tags[tracking.CODE_VERSION_TAG].split(":")[0] in ("git", "lakeward==0.1.0")
        artifacts = {item.path for item in mlflow.list_artifacts(run.info.run_id, "config")}
        assert artifacts == {"config/settings.yml"}


def test_mlflow_reads_a_version_0_input_back_with_its_version(spark: SparkSession, base_settings: Settings,
                                                             tmp_path: Path) -> None:
    settings = isolated(base_settings, tmp_path)
    name = settings.table("gold_user_features").replace("user_features", "tracked_v0")
    tables.ensure_schema(spark, name.split(".")[0])
    spark.range(3).write.format("delta").saveAsTable(name)
    assert tables.current_version(spark, name) == 0
    dataset = tracking.delta_input(spark, name, 0, context="source").dataset
    source = mlflow.data.get_source(mlflow.entities.Dataset(
        name=dataset.name, digest=dataset.digest, source_type=dataset.source.__class__._get_source_type(),
        source=dataset.source.to_json(),
    ))
    assert json.loads(dataset.source.to_json())["delta_table_version"] == 0
    assert source.delta_table_version == 0 and source.delta_table_name.endswith(name)


def test_a_table_made_again_is_a_new_dataset_in_mlflow(spark: SparkSession, base_settings: Settings,
                                                       tmp_path: Path) -> None:
    settings = isolated(base_settings, tmp_path)
    name = settings.table("gold_user_features").replace("user_features", "made_again")
    tables.ensure_schema(spark, name.split(".")[0])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment("made_again")
        runs = []
        for rows in (3, 5):  # dropped and made again: the same name at the same version
            if tables.exists(spark, name):
                drop_table(spark, name)
            spark.range(rows).write.format("delta").saveAsTable(name)
            given = tracking.delta_input(spark, name, 0, context="source", rows=rows)
            with mlflow.start_run() as run:
                mlflow.log_inputs(datasets=[given.dataset], contexts=[given.context], tags_list=[given.tags])
            runs.append(mlflow.get_run(run.info.run_id))
    finally:
        mlflow.set_tracking_uri(None)
    datasets = [run.inputs.dataset_inputs[0].dataset for run in runs]
    # Before, the second run was linked to the first table's record, which says 3 rows.
    assert [json.loads(dataset.profile)["num_rows"] for dataset in datasets] == [3, 5]
    assert datasets[0].digest != datasets[1].digest and datasets[0].name == datasets[1].name


def test_mlflow_holds_no_identifiers_and_nothing_lands_in_mlruns(trained, store: Path) -> None:
    settings, _ = trained
    assert not (settings.data_root / "mlruns").exists()
    contents = b"".join(path.read_bytes() for path in store.rglob("*") if path.is_file())
    assert b"churn_probability" in contents  # the model signature: the scan does see the store
    for raw in RAW_IDS[:USERS]:
        assert raw.encode() not in contents
        assert user_key(raw).encode() not in contents


def test_rebuild_from_run_matches_even_after_inputs_change(trained, spark: SparkSession) -> None:
    settings, summary = trained
    new_orders = [(f"new-{r[0]}", *r[1:5], r[5] + timedelta(days=200)) for r in order_rows(20, seed=99)]
    append_orders(spark, settings, new_orders)
    # As in a new process: rebuild must find the store itself, not MLflow's default in the cwd.
    mlflow.set_tracking_uri(None)
    result = tracking.rebuild_training_set(spark, settings, summary.parent_run_id, output="rebuilt")
    assert result.content_hash == summary.training_set.content_hash
    assert result.output is not None and result.output.endswith(".rebuilt")
    properties = tables.properties(spark, result.output)
    assert properties[tracking.HASH_TAG] == summary.training_set.content_hash
    assert properties["lakeward.rebuilt_from_run"] == summary.parent_run_id
    # Its rows are about users, as the training set's are: erasure finds it by this property.
    assert properties[tables.SUBJECT_COLUMN_PROPERTY] == "user_key"
    # A training set written before may be replaced; a table that is not one may not.
    again = tracking.rebuild_training_set(spark, settings, summary.parent_run_id, output="rebuilt")
    assert again.output_version == result.output_version + 1
    foreign = result.output.rsplit(".", 1)[0] + ".kept"
    tables.overwrite(spark.range(2), foreign)
    with pytest.raises(tracking.LineageError, match=f"{foreign} exists and is not a training set"):
        tracking.rebuild_training_set(spark, settings, summary.parent_run_id, output="kept")
    assert tables.current_version(spark, foreign) == 0 and spark.table(foreign).count() == 2


def test_tampered_hash_and_missing_versions_are_clear_errors(trained, spark: SparkSession) -> None:
    settings, summary = trained
    mlflow = tracking.mlflow_module()
    recorded = tracking.lineage(summary.parent_run_id)
    orders = settings.table("silver_orders")
    with mlflow.start_run(experiment_id=summary.experiment_id, run_name="tampered") as run:
        mlflow.set_tags({tracking.SPEC_TAG: recorded.spec_json, tracking.HASH_TAG: "0" * 64})
    mismatch = r"has content hash [0-9a-f]{64}, but the run logged 0{64}"
    with pytest.raises(tracking.LineageError, match=mismatch) as err:
        tracking.rebuild_training_set(spark, settings, run.info.run_id)
    assert f"{orders}@v" in str(err.value)

    spec = json.loads(recorded.spec_json)
    spec["inputs"][orders] = 99
    with mlflow.start_run(experiment_id=summary.experiment_id, run_name="future") as run:
        mlflow.set_tags({tracking.SPEC_TAG: json.dumps(spec), tracking.HASH_TAG: recorded.content_hash})
    beyond = rf"{orders} has no version 99: its latest version is \d+"
    with pytest.raises(tracking.LineageError, match=beyond):
        tracking.rebuild_training_set(spark, settings, run.info.run_id)

    with mlflow.start_run(experiment_id=summary.experiment_id, run_name="bare") as bare:
        pass
    with pytest.raises(tracking.LineageError, match="no training-set lineage"):
        tracking.rebuild_training_set(spark, settings, bare.info.run_id)


def test_vacuumed_version_names_table_and_version(
    spark: SparkSession, base_settings: Settings, store: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lakeward.training_set import BuildSpec

    settings = with_store(isolated(base_settings, tmp_path), store)
    name = settings.table("silver_orders")
    tables.ensure_schema(spark, name.split(".")[0])
    tables.overwrite(spark.range(3).withColumn("event_id", F.col("id").cast("string")), name)
    tables.overwrite(spark.range(5).withColumn("event_id", F.col("id").cast("string")), name)
    spec = BuildSpec(inputs={name: 0}, horizon_days=30, ttl_days=3, split="group",
                     fractions=(0.7, 0.15, 0.15), seed=7, t1=None, t2=None,
                     observed_until=date(2026, 4, 1), feature_version="v1")
    experiment = tracking.configure(settings)
    mlflow = tracking.mlflow_module()
    with mlflow.start_run(experiment_id=experiment, run_name="vacuumed") as run:
        mlflow.set_tags({tracking.SPEC_TAG: spec.to_json(), tracking.HASH_TAG: "0" * 64})
    assert tracking.warn_unless_rebuildable(spark, spec.inputs)
    vacuum_everything_old(spark, name)
    with pytest.raises(tracking.LineageError, match=rf"{name} version 0 is no longer available"):
        tracking.rebuild_training_set(spark, settings, run.info.run_id)
    # What `train` says before it logs such versions.
    with caplog.at_level(logging.WARNING, logger="lakeward.tracking"):
        assert not tracking.warn_unless_rebuildable(spark, spec.inputs)
    assert f"cannot be rebuilt from the versions it was built from (rebuild-training-set would " \
        f"fail): {name} version 0 is no longer available" in caplog.text


def test_predict_writes_predictions_idempotently(trained, spark: SparkSession) -> None:
    """Scoring a day again replaces its slice, also with a column a user added to the table,
    which is left null (the MERGE names its columns: ``INSERT *`` refuses one the source lacks)."""
    from lakeward.predict import predict

    settings, summary = trained
    day = date(2026, 3, 1)
    first = predict(spark, settings, summary.parent_run_id, day)
    spark.sql(f"ALTER TABLE {tables.quoted_name(first.table)} ADD COLUMNS (note STRING)")
    again = predict(spark, settings, summary.parent_run_id, day)
    other = predict(spark, settings, summary.parent_run_id, day + timedelta(days=1))
    rows = tables.read(spark, first.table)
    users = (tables.read(spark, settings.table("gold_user_features"))
             .filter(F.col("feature_date") == F.lit(day)).count())
    assert first.rows == again.rows == users > 0 and again.version > first.version
    slice_ = rows.filter((F.col("run_id") == summary.parent_run_id) & (F.col("feature_date") == F.lit(day)))
    assert slice_.count() == users and slice_.select("user_key").distinct().count() == users
    assert rows.count() == users + other.rows
    assert rows.filter(F.col("note").isNotNull()).count() == 0
    stats = slice_.agg(F.min("score"), F.max("score"), F.countDistinct("model_version")).first()
    assert 0 <= stats[0] < stats[1] <= 1 and stats[2] == 1  # probabilities that differ between users
    assert slice_.first()["model_version"] == summary.model_version == first.model_version


def test_predict_refuses_a_registry_that_does_not_hold_the_run_s_model(
    trained, spark: SparkSession, tmp_path: Path
) -> None:
    """The run records a model's name and version, not the registry: another registry since may
    hold no such version, or another model under it."""
    from lakeward.predict import PredictionError, predict

    settings, summary = trained
    other = f"sqlite:///{tmp_path / 'registry.db'}"
    elsewhere = settings.model_copy(
        update={"tracking": settings.tracking.model_copy(update={"registry_uri": other})}
    )
    with pytest.raises(PredictionError, match=rf"version {summary.model_version}, which the registry "
                                              rf"sqlite:///\S+ does not hold"):
        predict(spark, elsewhere, summary.parent_run_id, date(2026, 3, 1))
    registry = mlflow.MlflowClient(tracking_uri=other, registry_uri=other)
    registry.create_registered_model(settings.tracking.registered_model)
    for _ in range(int(summary.model_version)):
        registry.create_model_version(settings.tracking.registered_model, source=str(tmp_path))
    with pytest.raises(PredictionError, match=r"was not registered by run"):
        predict(spark, elsewhere, summary.parent_run_id, date(2026, 3, 1))


def test_missing_training_set_says_what_to_run(spark: SparkSession, fresh_settings: Settings) -> None:
    with pytest.raises(TrainingSetMissingError, match=r"run `lakeward training-set` first"):
        open_training_set(spark, fresh_settings)
    with pytest.raises(TrainingSetMissingError, match=r"run `lakeward training-set --name other` first"):
        open_training_set(spark, fresh_settings, "other")


def test_dp_sweep_runs_each_epsilon_beside_the_twin_and_logs_a_plot(
    trained, spark: SparkSession, caplog: pytest.LogCaptureFixture
) -> None:
    from lakeward.train import sweep

    settings, _ = trained
    with caplog.at_level(logging.WARNING, logger="lakeward.train"):
        summary = sweep(spark, settings, [4.0, 1.0, 60.0])
    assert [r.privacy.epsilon_target for r in summary.sweep] == [1.0, 4.0, 60.0]
    # The weak epsilon is warned about once, by the run that uses it.
    assert caplog.text.count("no formal privacy") == 1 and "epsilon 60 gives" in caplog.text
    for result in summary.sweep:
        assert 0 < result.privacy.epsilon_spent <= result.privacy.epsilon_target
    assert summary.plot is not None and summary.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary.plot.is_relative_to(settings.data_root)
    mlflow_client = client(settings)
    artifacts = [a.path for a in mlflow_client.list_artifacts(summary.parent_run_id, "plots")]
    assert artifacts == [f"plots/{summary.plot.name}"]
    children = mlflow_client.search_runs(
        [summary.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )
    assert len(children) == 4, "one DP run per epsilon and the non-private twin"
    # Every run's config params say what it trained with, not the config's defaults.
    for result in summary.sweep:
        params = mlflow_client.get_run(result.run_id).data.params
        assert float(params["training.epsilon"]) == result.privacy.epsilon_target
    parent = mlflow_client.get_run(summary.parent_run_id).data.params
    assert json.loads(parent["training.sweep_epsilons"]) == [1.0, 4.0, 60.0]


def test_a_training_set_without_validation_and_test_parts_still_sweeps(
    trained, spark: SparkSession
) -> None:
    """A group split may leave parts empty (the build warns): the runs are logged without test metrics."""
    from lakeward import training_set
    from lakeward.cli import _train_report
    from lakeward.train import sweep

    settings, _ = trained
    train_only = settings.training_set.model_copy(update={"fractions": (1.0, 0.0, 0.0)})
    settings = settings.model_copy(update={"training_set": train_only})
    built = training_set.build(spark, settings, name="train_only")
    assert built.split_rows["validation"] == built.split_rows["test"] == 0
    summary = sweep(spark, settings, [3.0], table="train_only")
    runs = [*summary.results.values(), *summary.sweep]
    assert all("test_roc_auc" not in r.metrics for r in runs)
    # The twin is scored on train; a DP run shows nothing of its train rows but the model.
    assert "train_roc_auc" in summary.results[TWIN].metrics
    assert all(not any(key.startswith("train_") for key in r.metrics) for r in summary.sweep)
    assert _train_report(summary).count("test ROC-AUC n/a") == 2
    assert summary.plot is not None and summary.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = client(settings).get_run(summary.parent_run_id).data.metrics
    assert "test_roc_auc_dp" not in metrics and "test_roc_auc_non_private" not in metrics


def test_each_logged_model_gives_what_its_signature_says(trained, spark: SparkSession) -> None:
    settings, summary = trained
    client(settings)
    training_set = tables.read(spark, summary.training_set.table, version=summary.training_set.version)
    rows = training_set.limit(5).toPandas()
    test = training_set.filter(F.col("split") == "test").toPandas()
    assert 0 < test["churned"].sum() < len(test)
    for result in summary.results.values():
        info = mlflow.models.get_model_info(result.model_uri)
        features = info.signature.inputs.input_names()
        outputs = info.signature.outputs.input_names()
        assert outputs[-1] == "churn_probability"
        model = mlflow.pyfunc.load_model(result.model_uri)
        predicted = model.predict(rows[features].astype("float64"))
        assert predicted.shape == (5, len(outputs)), result.kind
        # On the test split, the logged model scores what the run measured.
        # Some flavours name the output columns, others only order them as the signature does.
        scored = np.asarray(model.predict(test[features].astype("float64")))
        churn = scored[:, outputs.index("churn_probability")]
        assert roc_auc_score(test["churned"], churn) == pytest.approx(result.metrics["test_roc_auc"])
        if result.kind == TWIN:
            # Its probabilities are churn rates (the net starts from train's), not ranks around 0.5.
            train = training_set.filter(F.col("split") == "train")
            train_rate = train.agg(F.avg(F.col("churned").cast("int"))).first()[0]
            assert churn.mean() == pytest.approx(train_rate, abs=0.1)
