"""Training preparation without Spark or torch: arrays, preprocessing, metrics, privacy arguments."""

import json
import logging
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lakeward import tracking
from lakeward.config import load_settings
from lakeward.train import PrivacyParameterError, check_delta, check_epsilon, default_delta, with_overrides
from lakeward.train_data import Preprocessor, TrainingDataError, arrays_from_pandas, scores
from tests.cli_process import lakeward

NAN = math.nan
FEATURES = ("orders_30d", "days_since_last_order", "mean_rating")


def frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["label_id", "churned", "split", *FEATURES])


ROWS = [
    ("o3", 0, "train", 4, 2, NAN),
    ("o1", 1, "train", 0, NAN, NAN),
    ("o2", 0, "train", 6, 1, NAN),
    ("o4", 1, "validation", 1, 9, 4.0),
    ("o5", 0, "test", 5, NAN, NAN),
]


def test_arrays_are_split_and_ordered_by_label_id() -> None:
    data = arrays_from_pandas(frame(ROWS), FEATURES)
    np.testing.assert_array_equal(data.train.y, [1, 0, 0])  # o1, o2, o3
    np.testing.assert_array_equal(data.train.x[:, 0], [0, 6, 4])
    assert np.isnan(data.train.x[0, 1]) and data.validation.rows == 1 and data.test.rows == 1
    shuffled = arrays_from_pandas(frame(ROWS[::-1]), FEATURES)
    np.testing.assert_array_equal(shuffled.train.x, data.train.x)


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        (ROWS, FEATURES + ("spend_7d",), r"lacks columns \['spend_7d'\]"),
        ([("o1", 1, "holdout", 0, 0, 0.0), *ROWS], FEATURES, "split must be one of"),
        ([("o1", 2, "train", 0, 0, 0.0)], FEATURES, "churned must be 0 or 1"),
        ([r for r in ROWS if r[2] != "train"], FEATURES, "train split is empty"),
        ([r for r in ROWS if r[1] == 0], FEATURES, "only one class"),
    ],
)
def test_bad_training_rows_are_named(rows: list[tuple], columns: tuple[str, ...], message: str) -> None:
    with pytest.raises(TrainingDataError, match=message):
        arrays_from_pandas(frame(rows), columns)


def test_preprocessor_fits_on_train_only() -> None:
    train = np.array([[0.0, NAN, NAN], [6.0, 1.0, NAN], [4.0, 2.0, NAN]])
    prep = Preprocessor.fit(train)
    # Median of the train values; the all-null column is kept and filled with 0.
    np.testing.assert_allclose(prep.fill, [4.0, 1.5, 0.0])
    # Indicators for the columns that had nulls in train, after the features.
    np.testing.assert_array_equal(prep.indicator_columns, [1, 2])
    assert prep.output_names(FEATURES) == [*FEATURES, "days_since_last_order_missing", "mean_rating_missing"]
    z = prep.transform(train)
    assert z.shape == (3, 5) and z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-6)
    # Validation statistics never move the fit: a null where train had none gets the train median.
    other = prep.transform(np.array([[NAN, 100.0, 3.0]]))
    assert other[0, 0] == pytest.approx((4.0 - prep.mean[0]) / prep.scale[0], rel=1e-5)
    assert not np.isnan(other).any()


def test_scores() -> None:
    y = np.array([0, 0, 1, 1])
    perfect = scores(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert perfect["roc_auc"] == 1.0 and perfect["pr_auc"] == 1.0
    assert perfect["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert perfect["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.8, 0.9])))
    single = scores(np.array([0, 0]), np.array([0.2, 0.4]))
    assert math.isnan(single["roc_auc"]) and math.isnan(single["pr_auc"]) and single["brier"] > 0


@pytest.mark.parametrize("epsilon", [0, -1, math.nan, math.inf])
def test_nonsense_epsilon_is_refused(epsilon: float) -> None:
    with pytest.raises(PrivacyParameterError, match="epsilon must be a positive, finite number"):
        check_epsilon(epsilon)


@pytest.mark.parametrize("delta", [0, 1, 1.5, -1e-5, math.nan])
def test_nonsense_delta_is_refused(delta: float) -> None:
    with pytest.raises(PrivacyParameterError, match="strictly between 0 and 1"):
        check_delta(delta)


def test_delta_must_be_below_one_over_n() -> None:
    check_delta(1e-4, rows=9_999)
    with pytest.raises(PrivacyParameterError, match=r"not below 1/N = 0.001 for N = 1000 train rows"):
        check_delta(1e-3, rows=1000)
    assert default_delta(1000) == pytest.approx(1e-4) and default_delta(1000) < 1 / 1000


def test_overrides_are_validated() -> None:
    settings = load_settings("local")
    updated = with_overrides(settings, epochs=3, model="mlp", epsilon=None)
    assert updated.training.epochs == 3 and updated.training.model == "mlp"
    assert updated.training.epsilon == settings.training.epsilon
    with pytest.raises(ValueError, match="epochs"):
        with_overrides(settings, epochs=0)
    with pytest.raises(PrivacyParameterError):
        with_overrides(settings, epsilon=-2.0)


def test_tracking_defaults_stay_under_the_data_root(tmp_path: Path) -> None:
    settings = load_settings("local", data_root=tmp_path)
    assert tracking.tracking_uri(settings) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert tracking.artifact_location(settings) == (tmp_path.resolve() / "mlflow" / "artifacts").as_uri()
    remote = settings.model_copy(update={
        "tracking": settings.tracking.model_copy(update={"uri": "http://mlflow.internal:5000"})
    })
    assert tracking.tracking_uri(remote) == "http://mlflow.internal:5000"
    assert tracking.artifact_location(remote) is None  # the server decides


def test_config_params_and_code_version() -> None:
    settings = load_settings("local")
    params = tracking.config_params(settings)
    assert params["training.epochs"] == str(settings.training.epochs)
    assert params["tables.silver_orders"] == "silver.orders"
    assert params["training.delta"] == "null"
    version = tracking.code_version()
    checkout = Path(tracking.__file__).resolve().parents[2]
    if (checkout / ".git").exists():  # the tests run from a clone
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True,
                              text=True, check=True).stdout.strip()
        assert version.removesuffix("+dirty") == f"git:{head}"
    else:
        assert version.startswith("lakeward==")


def test_params_say_how_the_training_set_was_built_not_what_the_config_says_now() -> None:
    from lakeward.training_set import BuildSpec

    settings = load_settings("local")
    t1, t2 = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 15, tzinfo=UTC)
    spec = BuildSpec(inputs={"silver.orders": 3, "gold.user_features": 5}, horizon_days=14, ttl_days=None,
                     split="temporal", fractions=(0.8, 0.1, 0.1), seed=3, t1=t1, t2=t2,
                     observed_until=datetime(2026, 4, 1, tzinfo=UTC), feature_version="v9",
                     feature_columns=("orders_7d", "spend_7d", "orders_60d", "spend_60d", "rating_count"))
    assert settings.pipeline.feature_version != "v9" and settings.training_set.split != "temporal"
    params = tracking.config_params(settings, spec)
    assert params["pipeline.feature_version"] == "v9"
    assert json.loads(params["pipeline.feature_windows_days"]) == [7, 60]
    assert params["training_set.split"] == "temporal"
    assert params["training_set.horizon_days"] == "14" and params["training_set.ttl_days"] == "null"
    assert params["training_set.t1"] == t1.isoformat() and params["training_set.t2"] == t2.isoformat()
    assert json.loads(params["training_set.fractions"]) == [0.8, 0.1, 0.1]
    # What is not the set's stays the config's.
    assert params["training.epochs"] == str(settings.training.epochs)
    assert tracking.loggable_settings(settings, spec)["training_set"]["seed"] == 3


def test_credentials_in_the_settings_do_not_reach_mlflow() -> None:
    settings = load_settings("local")
    settings = settings.model_copy(update={
        "tracking": settings.tracking.model_copy(
            update={"uri": "postgresql://mlflow:hunter2@db.internal:5432/mlflow"}),
        "spark": settings.spark.model_copy(update={
            "conf": {**settings.spark.conf,
                     "spark.hadoop.fs.s3a.secret.key": "s3cr3t",
                     "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "azk3y",
                     "spark.hadoop.javax.jdo.option.ConnectionURL": "jdbc:mysql://hive:pw9@meta/db",
                     "spark.driver.extraJavaOptions": "-Xss4m -Djavax.net.ssl.trustStorePassword=ts1 -Da=1",
                     "spark.hadoop.metastore.url": "jdbc:postgresql://meta/db?user=hive&password=q2&ssl=1"},
            "driver_java_options": ["-XX:+UseParallelGC", "-Dtrust.store.password=changeit"],
        }),
    })
    params = tracking.config_params(settings)
    logged = json.dumps(params) + json.dumps(tracking.loggable_settings(settings))
    for secret in ("hunter2", "s3cr3t", "azk3y", "pw9", "changeit", "ts1", "q2&"):
        assert secret not in logged
    assert params["spark.conf.spark.driver.extraJavaOptions"] == (
        f"-Xss4m -Djavax.net.ssl.trustStorePassword={tracking.REDACTED} -Da=1")
    assert params["spark.conf.spark.hadoop.metastore.url"] == (
        f"jdbc:postgresql://meta/db?user=hive&password={tracking.REDACTED}&ssl=1")
    assert params["tracking.uri"] == "postgresql://***@db.internal:5432/mlflow"
    assert params["spark.conf.spark.hadoop.fs.s3a.secret.key"] == tracking.REDACTED
    shuffle = "spark.sql.shuffle.partitions"
    assert params[f"spark.conf.{shuffle}"] == settings.spark.conf[shuffle]
    assert json.loads(params["spark.driver_java_options"]) == [
        "-XX:+UseParallelGC", "-Dtrust.store.password=" + tracking.REDACTED]


def test_sweep_plot_is_a_png(tmp_path: Path) -> None:
    from lakeward.dp_plot import plot_sweep

    path = plot_sweep([(8.0, 0.74), (0.5, 0.6), (2.0, 0.7)], 0.76, tmp_path / "plots" / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without a test part there is no ROC-AUC to draw.
    empty = plot_sweep([(1.0, math.nan)], math.nan, tmp_path / "plots" / "empty.png")
    assert empty.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_and_train_imports_leave_torch_out() -> None:
    code = (
        "import sys, lakeward.cli, lakeward.train, lakeward.tracking, lakeward.predict; "
        "print(sorted(m for m in ('torch', 'opacus', 'mlflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cli_lists_ml_commands_and_refuses_bad_privacy_arguments(tmp_path: Path) -> None:
    env = {**os.environ, "LAKEWARD_HOME": str(tmp_path)}
    listed = lakeward(env, "--help")
    assert listed.returncode == 0
    for command in ("train", "dp-sweep", "predict", "rebuild-training-set"):
        assert command in listed.stdout
        assert lakeward(env, command, "--help").returncode == 0
    for args, message in [
        (["train", "--epsilon", "0"], "epsilon must be a positive, finite number"),
        (["train", "--delta", "1"], "delta must be a probability strictly between 0 and 1"),
        (["dp-sweep", "--epsilons", "1,-2"], "epsilon must be a positive, finite number"),
        (["train", "--epsilon", "1000"], "epsilon 1000 is above 100: it bounds nothing"),
        (["dp-sweep", "--epsilons", "1,1e9"], "epsilon 1e+09 is above 100"),
        (["dp-sweep", "--epsilons", "1,,2"], "argument --epsilons: expected numbers separated by commas"),
        (["dp-sweep", "--epsilons", "2,1,2"], "argument --epsilons: 2 given more than once"),
        # One point per hundredth of epsilon on MLflow's step axis.
        (["dp-sweep", "--epsilons", "1,0.501,0.5"], "epsilon 0.501 and 0.5 round to the same hundredth"),
        (["dp-sweep", "--epsilons", "0.004,1"], "epsilon 0.004 is below 0.005"),
        (["train", "--seed", "-1"], "invalid training options: seed: Input should be greater than or equal"),
        (["train", "--seed", str(2**32)], "invalid training options: seed: Input should be less than"),
    ]:
        result = lakeward(env, *args)
        assert result.returncode == 2
        prefixes = ("lakeward: error: ", f"lakeward {args[0]}: error: ")
        assert result.stderr.startswith(tuple(prefix + message for prefix in prefixes))
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow").exists()  # refused before any store or session was touched


def test_looking_up_a_run_in_a_store_never_made_creates_nothing(tmp_path: Path) -> None:
    settings = load_settings("local", data_root=tmp_path)
    with pytest.raises(tracking.LineageError, match=r"no MLflow run 'abc': nothing has been tracked in"):
        tracking.configure_to_read(settings, "abc")
    assert not settings.mlflow_dir.exists()
    # A store that exists is found, also behind a URI with SQLAlchemy options.
    store = tmp_path / "other" / "mlflow.db"
    store.parent.mkdir()
    store.touch()
    assert tracking._sqlite_file(f"sqlite:///{store}?timeout=30") == store


def test_mlflow_s_own_uri_variables_are_named_when_they_are_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings("local", data_root=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    settings.mlflow_dir.mkdir(parents=True)
    (settings.mlflow_dir / "mlflow.db").touch()
    with caplog.at_level(logging.WARNING, logger="lakeward.tracking"):
        tracking.configure_to_read(settings, "abc")
    assert "MLFLOW_TRACKING_URI is set but not used" in caplog.text
    assert f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db" in caplog.text
    assert "elsewhere" not in caplog.text
    # What MLflow exported for the store lakeward chose is not the user's.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lakeward.tracking"):
        tracking._use_store("sqlite:///other.db")
        tracking.configure_to_read(settings, "abc")
    assert caplog.text == ""
    # The same store named both ways, or a credential in the one lakeward uses.
    caplog.clear()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://me:pw@db/mlflow")
    with caplog.at_level(logging.WARNING, logger="lakeward.tracking"):
        tracking._warn_of_ignored_environment("postgresql://me:pw@db/mlflow")
        assert caplog.text == ""
        tracking._warn_of_ignored_environment("postgresql://me:s3cret@db/mlflow")
    assert "postgresql://***@db/mlflow" in caplog.text and "s3cret" not in caplog.text


@pytest.fixture
def mlflow_stores_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's stores put back after the test, so no later test finds it pointed elsewhere."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)


def test_mlflow_prints_no_run_link_with_the_store_s_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    tracking.mlflow_module()
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    # Without the setting, ending a run on a tracking server looks the run up (here a closed
    # port: an error) to print its link, password and all, on stdout.
    TrackingServiceClient("http://lakeward:s3cret@127.0.0.1:9")._log_url("0" * 32)
    assert capsys.readouterr().out == ""


@pytest.mark.usefixtures("mlflow_stores_put_back")
def test_models_go_to_the_registry_of_the_config(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "databricks-uc")
    with caplog.at_level(logging.WARNING, logger="lakeward.tracking"):
        tracking._use_store("databricks", "databricks-uc")
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == ("databricks", "databricks-uc")
    assert caplog.text == ""  # the variable names the registry lakeward uses
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://elsewhere:5000")
    with caplog.at_level(logging.WARNING, logger="lakeward.tracking"):
        tracking._use_store("databricks", "databricks-uc")
    assert "MLFLOW_REGISTRY_URI is set but not used: lakeward uses tracking.registry_uri" in caplog.text
    assert "(databricks-uc)" in caplog.text and "elsewhere" not in caplog.text


@pytest.mark.usefixtures("mlflow_stores_put_back")
def test_a_run_lookup_tells_a_missing_run_from_a_store_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking._use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(tracking.LineageError, match=r"^no MLflow run '0{32}' in sqlite:///"):
        tracking.get_run("0" * 32)
    # Nothing listens on port 9: refused at once, with no retry.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracking._use_store("http://lakeward:s3cret@127.0.0.1:9")
    with pytest.raises(tracking.LineageError) as caught:
        tracking.get_run("0" * 32)
    message = str(caught.value)
    assert message.startswith(f"could not look up MLflow run '{'0' * 32}' in http://***@127.0.0.1:9: ")
    assert "s3cret" not in message and "\n" not in message


def test_a_metric_a_one_class_part_cannot_have_is_logged_as_n_a() -> None:
    from lakeward.train import _describe

    text = _describe({"validation_roc_auc": math.nan, "validation_log_loss": 0.51234, "test_roc_auc": 0.7})
    assert text == "validation: roc_auc n/a, log_loss 0.5123; test: roc_auc 0.7000"
