"""``lakeward train`` and ``lakeward dp-sweep``: the churn model, private and not, in MLflow.

One parent run per command, on the training set ``lakeward training-set`` wrote, read at
one Delta version. The parent logs the config, the code version, every input Delta table
with its version, and the training set's spec and content hash. Its child runs train on
the same split with the same seed, and each logs the same config, code version and inputs
(a child is a training run in its own right: the registered model points at one):

- ``dp``: DP-SGD through Opacus to the target (epsilon, delta), with Poisson sampling;
- ``non_private``: the same network and optimizer without privacy (the twin);
- ``sklearn_logreg``: scikit-learn ``LogisticRegression(class_weight="balanced")``.

Each child logs ROC-AUC, PR-AUC, log loss and Brier score on validation and test (the twin
and the baseline on train too), and its model with a signature and pinned pip requirements.
The main model (the DP one, or the twin with ``--no-dp``) is registered::

    summary = train(spark, settings, dp=True)
    summary.parent_run_id, summary.model_version

torch and opacus are imported only when a model is trained (``lakeward.dpsgd``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from lakeward import tables, tracking
from lakeward.config import MAX_EPSILON, Settings, TrainingSettings
from lakeward.train_data import SPLITS, Preprocessor, TrainingArrays, load_training_arrays, scores

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Above this a DP run is trained but warned about: e**50 bounds nothing in practice.
WEAK_EPSILON = 50.0

DP, TWIN, BASELINE = "dp", "non_private", "sklearn_logreg"
EVALUATED = ("validation", "test")


class PrivacyParameterError(ValueError):
    """An epsilon or delta that makes no sense."""


class TrainingSetMissingError(LookupError):
    """There is no training set to train on (``lakeward training-set`` has not run)."""


@dataclass(frozen=True)
class ModelResult:
    """One child run: its metrics, and for DP what privacy it cost."""

    kind: str
    run_id: str
    metrics: dict[str, float]
    epoch_seconds: tuple[float, ...] = ()
    privacy: Any = None
    model_uri: str | None = None


@dataclass(frozen=True)
class TrainSummary:
    """What ``lakeward train`` (or ``dp-sweep``) did."""

    parent_run_id: str
    experiment_id: str
    training_set: tracking.TrainingSnapshot
    results: dict[str, ModelResult]
    model_name: str | None = None
    model_version: str | None = None
    plot: Path | None = None
    sweep: list[ModelResult] = field(default_factory=list)


# --- arguments -------------------------------------------------------------------------


def check_epsilon(epsilon: float) -> None:
    """Epsilon must be a positive, finite number, at most ``MAX_EPSILON``."""
    if not isinstance(epsilon, int | float) or math.isnan(epsilon) or not 0 < epsilon < math.inf:
        raise PrivacyParameterError(
            f"epsilon must be a positive, finite number (smaller is more private), got {epsilon}"
        )
    if epsilon > MAX_EPSILON:
        raise PrivacyParameterError(
            f"epsilon {epsilon:g} is above {MAX_EPSILON:g}: it bounds nothing, and Opacus cannot search "
            "for a noise level that small; use an epsilon of 0.5 to 10 (`lakeward train --no-dp` trains "
            "without privacy)"
        )


def check_sweep_epsilons(epsilons: Sequence[float]) -> None:
    """Each epsilon valid, and each its own point on MLflow's step axis (hundredths of epsilon)."""
    for epsilon in epsilons:
        check_epsilon(epsilon)
    steps: dict[int, float] = {}
    for epsilon in sorted(epsilons):
        step = _step(epsilon)
        if step == 0 or step in steps:
            clash = "is below 0.005" if step == 0 else f"and {steps[step]:g} round to the same hundredth"
            raise PrivacyParameterError(
                f"epsilon {epsilon:g} {clash}: dp-sweep logs each test ROC-AUC at step "
                "round(epsilon * 100), so epsilons must differ by at least 0.01 and be at least 0.01"
            )
        steps[step] = epsilon


def check_delta(delta: float, rows: int | None = None) -> None:
    """Delta must lie in (0, 1), and below 1/N once the number of train rows N is known.

    A delta of 1/N or more allows a mechanism that publishes one person's row outright.
    """
    if not isinstance(delta, int | float) or math.isnan(delta) or not 0 < delta < 1:
        raise PrivacyParameterError(f"delta must be a probability strictly between 0 and 1, got {delta}")
    if rows is not None and delta >= 1 / rows:
        raise PrivacyParameterError(
            f"delta {delta:g} is not below 1/N = {1 / rows:.3g} for N = {rows} train rows; "
            f"use a smaller delta (default: 1/(10 N) = {default_delta(rows):.3g})"
        )


def default_delta(rows: int) -> float:
    """``1 / (10 N)``: below 1/N by an order of magnitude."""
    return 1.0 / (10 * rows)


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """Settings whose ``training`` section has the given values (``None`` keeps the config's)."""
    values = settings.training.model_dump()
    values.update({key: value for key, value in overrides.items() if value is not None})
    if overrides.get("epsilon") is not None:
        check_epsilon(overrides["epsilon"])
    if overrides.get("delta") is not None:
        check_delta(overrides["delta"])
    try:
        training = TrainingSettings.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid training options: {problems}") from None
    return settings.model_copy(update={"training": training})


# --- the training set ------------------------------------------------------------------


def open_training_set(
    spark: SparkSession, settings: Settings, table: str | None = None
) -> tuple[tracking.TrainingSnapshot, TrainingArrays]:
    """The training set (``ml.training_set``, or ``ml.<table>``) at its current Delta version.

    Its rows must still match the content hash ``lakeward training-set`` recorded.
    """
    from lakeward import training_set

    name = training_set.table_name(settings, table)
    command = "lakeward training-set" + ("" if table is None else f" --name {table}")
    if not tables.exists(spark, name):
        raise TrainingSetMissingError(f"training set table {name} does not exist; run `{command}` first")
    version = tables.current_version(spark, name)
    properties = tables.properties(spark, name)
    spec_json = properties.get(training_set.SPEC_PROPERTY)
    recorded = properties.get(training_set.CONTENT_HASH_PROPERTY)
    if not spec_json or not recorded:
        raise TrainingSetMissingError(
            f"{name} has no {training_set.SPEC_PROPERTY} / {training_set.CONTENT_HASH_PROPERTY} "
            f"properties, so it cannot be traced to its inputs (replaced outside lakeward?); drop it "
            f"(DROP TABLE {name}) and write it again with `{command}`"
        )
    spec = training_set.BuildSpec.from_json(spec_json)
    digest = training_set.content_hash(tables.read(spark, name, version=version))
    if digest != recorded:
        raise TrainingSetMissingError(
            f"{name} version {version} has content hash {digest} but its property says {recorded}: "
            f"it was changed after `lakeward training-set` wrote it; run `{command}` again"
        )
    # The columns the set was built with, also when the configured features changed since.
    columns = training_set.spec_feature_columns(spec, settings)
    data = load_training_arrays(spark, name, version, columns)
    rows = sum(data.split(split).rows for split in SPLITS)
    log.info("train: %s version %d, %d rows (train %d, validation %d, test %d), content hash %s",
             name, version, rows, data.train.rows, data.validation.rows, data.test.rows, digest)
    return tracking.TrainingSnapshot(name, version, rows, digest, spec), data


# --- runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    snapshot: tracking.TrainingSnapshot
    data: TrainingArrays
    preprocessor: Preprocessor
    z: dict[str, np.ndarray]
    delta: float
    experiment_id: str
    inputs: tuple[tracking.DeltaInput, ...]


def _prepare(spark: SparkSession, snapshot: tracking.TrainingSnapshot, data: TrainingArrays,
             settings: Settings, dp: bool, experiment_id: str) -> _Prepared:
    options = settings.training
    rows = data.train.rows
    delta = options.delta if options.delta is not None else default_delta(rows)
    if dp:
        check_delta(delta, rows)
    preprocessor = Preprocessor.fit(data.train.x)
    z = {"train": preprocessor.transform(data.train.x)}
    for split in SPLITS:
        if split not in z:
            # A group split can leave validation or test empty; scikit-learn refuses to transform no rows.
            z[split] = (preprocessor.transform(data.split(split).x) if data.split(split).rows
                        else np.empty((0, z["train"].shape[1]), dtype=z["train"].dtype))
    inputs = tracking.training_inputs(spark, snapshot)
    return _Prepared(snapshot, data, preprocessor, z, delta, experiment_id, inputs)


def train(
    spark: SparkSession, settings: Settings, *, dp: bool = True, table: str | None = None
) -> TrainSummary:
    """Train on the training-set table; see the module docstring for the runs it logs."""
    snapshot, data = open_training_set(spark, settings, table)
    return train_snapshot(spark, settings, snapshot, data, dp=dp)


def train_snapshot(
    spark: SparkSession,
    settings: Settings,
    snapshot: tracking.TrainingSnapshot,
    data: TrainingArrays,
    *,
    dp: bool = True,
) -> TrainSummary:
    """Train on arrays already read from ``snapshot`` (the table at its version)."""
    options = settings.training
    if dp:
        check_epsilon(options.epsilon)
    experiment_id = tracking.configure(settings)
    prepared = _prepare(spark, snapshot, data, settings, dp, experiment_id)
    mlflow = tracking.mlflow_module()
    label = f"eps{options.epsilon:g}" if dp else "no-dp"
    results: dict[str, ModelResult] = {}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{options.model}-{label}") as parent:
        _log_parent(settings, prepared, kind="train", dp=dp)
        if dp:
            results[DP] = _train_dp(settings, prepared, options.epsilon, register=True)
        results[TWIN] = _train_twin(settings, prepared, register=not dp)
        results[BASELINE] = _train_baseline(settings, prepared)
        main = results[DP if dp else TWIN]
        name, version = _record_registration(settings, parent.info.run_id, main)
        _log_comparison(results)
    log.info("train: parent run %s in experiment %s; registered %s version %s",
             parent.info.run_id, experiment_id, name, version)
    return TrainSummary(parent.info.run_id, experiment_id, snapshot, results, name, version)


def sweep(
    spark: SparkSession,
    settings: Settings,
    epsilons: Sequence[float],
    *,
    table: str | None = None,
) -> TrainSummary:
    """One DP run per epsilon plus the non-private twin, and a plot of test ROC-AUC against epsilon."""
    check_sweep_epsilons(epsilons)
    if not epsilons:
        raise PrivacyParameterError("dp-sweep needs at least one epsilon")
    snapshot, data = open_training_set(spark, settings, table)
    return sweep_snapshot(spark, settings, snapshot, data, epsilons)


def sweep_snapshot(
    spark: SparkSession,
    settings: Settings,
    snapshot: tracking.TrainingSnapshot,
    data: TrainingArrays,
    epsilons: Sequence[float],
) -> TrainSummary:
    """:func:`sweep` on arrays already read from ``snapshot``."""
    check_sweep_epsilons(epsilons)
    # The runs log the epsilons swept, not the config's default list.
    settings = with_overrides(settings, sweep_epsilons=tuple(epsilons))
    options = settings.training
    experiment_id = tracking.configure(settings)
    prepared = _prepare(spark, snapshot, data, settings, True, experiment_id)
    mlflow = tracking.mlflow_module()
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"dp-sweep-{options.model}") as parent:
        _log_parent(settings, prepared, kind="dp-sweep", dp=True)
        mlflow.log_param("dp_sweep.epsilons", json.dumps(sorted(epsilons)))
        twin = _train_twin(settings, prepared, register=False)
        runs = [_train_dp(settings, prepared, eps, register=False) for eps in sorted(epsilons)]
        # Without a test part of both classes there is no test ROC-AUC: nothing is logged for it,
        # and the plot shows no point.
        for result in runs:
            if not math.isnan(auc := _test_auc(result)):
                mlflow.log_metric("test_roc_auc_dp", auc, step=_step(result.privacy.epsilon_target))
        if not math.isnan(auc := _test_auc(twin)):
            mlflow.log_metric("test_roc_auc_non_private", auc)
        from lakeward.dp_plot import plot_sweep

        path = settings.plots_dir / f"dp_sweep_{parent.info.run_id}.png"
        plot_sweep(
            [(r.privacy.epsilon_target, _test_auc(r)) for r in runs],
            _test_auc(twin),
            path,
            title=f"{options.model}, {options.epochs} epochs, delta {prepared.delta:.2g}",
        )
        mlflow.log_artifact(str(path), "plots")
    log.info("dp-sweep: parent run %s; plot %s", parent.info.run_id, path)
    for result in runs:
        log.info("dp-sweep: epsilon %g (spent %.3f): test ROC-AUC %s", result.privacy.epsilon_target,
                 result.privacy.epsilon_spent, shown_auc(result))
    log.info("dp-sweep: non-private twin: test ROC-AUC %s", shown_auc(twin))
    return TrainSummary(parent.info.run_id, experiment_id, snapshot, {TWIN: twin}, plot=path, sweep=runs)


def _test_auc(result: ModelResult) -> float:
    """The test ROC-AUC, NaN when the test part is empty (no metric) or of one class."""
    return result.metrics.get("test_roc_auc", math.nan)


def shown_auc(result: ModelResult) -> str:
    """The test ROC-AUC as printed: four decimals, or ``n/a`` where there is none."""
    return _shown(_test_auc(result))


def _shown(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _step(epsilon: float) -> int:
    # MLflow steps are integers; epsilon in hundredths keeps the sweep's order on the x-axis.
    return round(epsilon * 100)


def _log_parent(settings: Settings, prepared: _Prepared, *, kind: str, dp: bool) -> None:
    mlflow = tracking.mlflow_module()
    tracking.log_run_context(settings, prepared.snapshot.spec)
    data = prepared.data
    mlflow.log_params({
        "features": json.dumps(list(data.features)),
        "model_inputs": json.dumps(prepared.preprocessor.output_names(data.features)),
        "rows.train": data.train.rows,
        "rows.validation": data.validation.rows,
        "rows.test": data.test.rows,
        "dp": str(dp).lower(),
        # A run without DP used no delta.
        **({"dp.delta_used": repr(prepared.delta)} if dp else {}),
    })
    mlflow.set_tag("lakeward.command", kind)
    tracking.log_training_lineage(prepared.snapshot, prepared.inputs)


@contextmanager
def _child(settings: Settings, prepared: _Prepared, name: str) -> Iterator[Any]:
    # Each child is a training run of its own (the registered model points at one), so it
    # carries the whole lineage and config, not just a link to its parent.
    mlflow = tracking.mlflow_module()
    with mlflow.start_run(experiment_id=prepared.experiment_id, run_name=name, nested=True) as run:
        mlflow.set_tag("lakeward.model_kind", name.split("-")[0])
        tracking.log_run_context(settings, prepared.snapshot.spec)
        tracking.log_training_lineage(prepared.snapshot, prepared.inputs)
        yield run


def _fit_config(settings: Settings) -> Any:
    from lakeward.dpsgd import FitConfig

    options = settings.training
    return FitConfig(options.model, options.hidden_units, options.epochs, options.batch_size,
                     options.learning_rate, options.seed)


def _train_dp(settings: Settings, prepared: _Prepared, epsilon: float,
              *, register: bool) -> ModelResult:
    from lakeward import dpsgd

    options = settings.training
    config = _fit_config(settings)
    train_set = prepared.data.train
    if epsilon > WEAK_EPSILON:
        log.warning("train: epsilon %g gives next to no formal privacy; typical values are 0.5 to 10",
                    epsilon)
    # The child logs the config it trained with: in a sweep, its own epsilon.
    with _child(with_overrides(settings, epsilon=epsilon), prepared, f"{DP}-eps{epsilon:g}") as run:
        try:
            net, privacy, seconds = dpsgd.fit_private(
                prepared.z["train"], train_set.y, config, epsilon=epsilon, delta=prepared.delta,
                max_grad_norm=options.max_grad_norm, accountant=options.accountant,
            )
        except dpsgd.NoiseSearchError as err:
            raise PrivacyParameterError(
                f"cannot reach epsilon {epsilon:g} at delta {prepared.delta:.3g} with "
                f"{options.epochs} epochs and batch size {options.batch_size} on {train_set.rows} "
                f"rows ({err}); use a larger epsilon, fewer epochs or a larger batch size"
            ) from None
        tracking.mlflow_module().log_params({**privacy.params(), **_net_params(settings)})
        tracking.mlflow_module().log_metric("dp_epsilon_spent", privacy.epsilon_spent)
        log.info("train: DP-SGD epsilon target %g, spent %.4f (delta %.3g, %s accountant), noise "
                 "multiplier %.3f, sample rate %.5f, %d steps", epsilon, privacy.epsilon_spent,
                 privacy.delta, privacy.accountant, privacy.noise_multiplier, privacy.sample_rate,
                 privacy.steps)
        # Validation and test only, as the issue asks: a score on the train rows tells of them
        # outside what epsilon covers.
        metrics = _evaluate(prepared, lambda z: dpsgd.probabilities(net, z), seconds, splits=EVALUATED)
        uri = _log_torch_model(settings, prepared, net, register=register, private=True)
    return ModelResult(DP, run.info.run_id, metrics, tuple(seconds), privacy, uri)


def _train_twin(settings: Settings, prepared: _Prepared,
                *, register: bool) -> ModelResult:
    from lakeward import dpsgd

    with _child(settings, prepared, TWIN) as run:
        net, seconds = dpsgd.fit_non_private(
            prepared.z["train"], prepared.data.train.y, _fit_config(settings)
        )
        tracking.mlflow_module().log_params(_net_params(settings))
        metrics = _evaluate(prepared, lambda z: dpsgd.probabilities(net, z), seconds)
        uri = _log_torch_model(settings, prepared, net, register=register, private=False)
    return ModelResult(TWIN, run.info.run_id, metrics, tuple(seconds), None, uri)


def _train_baseline(settings: Settings, prepared: _Prepared) -> ModelResult:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    mlflow = tracking.mlflow_module()
    with _child(settings, prepared, BASELINE) as run:
        model = LogisticRegression(
            class_weight="balanced", max_iter=1000, random_state=settings.training.seed
        )
        model.fit(prepared.z["train"], prepared.data.train.y)
        mlflow.log_params({"model": "sklearn LogisticRegression", "class_weight": "balanced",
                           "max_iter": 1000, "seed": settings.training.seed})
        metrics = _evaluate(prepared, lambda z: model.predict_proba(z)[:, 1], [])
        # Raw features in, probability out: the same preprocessing, fitted on train, in front.
        pipeline = Pipeline([*prepared.preprocessor.pipeline.steps, ("logreg", model)])
        import mlflow.sklearn

        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            # predict_proba gives both classes' probabilities, in the order of model.classes_.
            signature=_signature(prepared, ("not_churned_probability", "churn_probability")),
            pip_requirements=pinned("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy"),
            pyfunc_predict_fn="predict_proba",
            # skops (safe loading) refuses numpy dtypes unless trusted; SimpleImputer keeps one.
            serialization_format="skops",
            skops_trusted_types=["numpy.dtype"],
        )
    return ModelResult(BASELINE, run.info.run_id, metrics, (), None, info.model_uri)


def _net_params(settings: Settings) -> dict[str, Any]:
    options = settings.training
    return {"model": options.model, "hidden_units": options.hidden_units if options.model == "mlp" else 0,
            "epochs": options.epochs, "batch_size": options.batch_size,
            "learning_rate": options.learning_rate, "optimizer": "Adam", "seed": options.seed}


def _evaluate(prepared: _Prepared, predict: Any, seconds: list[float],
              splits: Sequence[str] = SPLITS) -> dict[str, float]:
    mlflow = tracking.mlflow_module()
    metrics: dict[str, float] = {}
    for split in splits:
        y = prepared.data.split(split).y
        if y.shape[0] == 0:
            continue
        for name, value in scores(y, predict(prepared.z[split])).items():
            metrics[f"{split}_{name}"] = value
    if seconds:
        metrics["epoch_seconds_median"] = float(np.median(seconds))
    mlflow.log_metrics({key: value for key, value in metrics.items() if not math.isnan(value)})
    return metrics


def pinned(*packages: str) -> list[str]:
    """``name==installed version`` for each package: explicit, never inferred."""
    return [f"{package}=={metadata.version(package)}" for package in packages]


def _signature(prepared: _Prepared, outputs: Sequence[str] = ("churn_probability",)) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("double", name) for name in prepared.data.features])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", name) for name in outputs]))


def _log_torch_model(settings: Settings, prepared: _Prepared, net: Any, *, register: bool,
                     private: bool) -> str:
    import mlflow.pytorch

    from lakeward import dpsgd

    scorer = dpsgd.scoring_module(prepared.preprocessor, net)
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    # The flavor warns about pickle for every model; this one is TorchScript (torch.jit.save).
    quiet.setLevel(logging.ERROR)
    try:
        info = mlflow.pytorch.log_model(
            scorer,
            name="model",
            signature=_signature(prepared),
            pip_requirements=pinned("mlflow", "torch", "numpy", "pandas"),
            serialization_format="pickle",
            registered_model_name=settings.tracking.registered_model if register else None,
            metadata={"lakeward.private": private, "lakeward.features": list(prepared.data.features)},
        )
    finally:
        quiet.setLevel(level)
    if register:
        tracking.mlflow_module().set_tag(tracking.MODEL_VERSION_TAG, str(info.registered_model_version))
    return str(info.model_uri)


def _record_registration(settings: Settings, parent_run_id: str, main: ModelResult) -> tuple[str, str]:
    mlflow = tracking.mlflow_module()
    client = tracking.client()
    name = settings.tracking.registered_model
    child = client.get_run(main.run_id)
    version = child.data.tags[tracking.MODEL_VERSION_TAG]
    tags = {tracking.MODEL_NAME_TAG: name, tracking.MODEL_VERSION_TAG: version,
            tracking.MODEL_URI_TAG: f"models:/{name}/{version}"}
    mlflow.set_tags(tags)
    for key, value in tags.items():
        client.set_tag(main.run_id, key, value)
    client.set_model_version_tag(name, version, tracking.PARENT_RUN_TAG, parent_run_id)
    client.set_model_version_tag(name, version, "lakeward.private", str(main.kind == DP).lower())
    if main.privacy is not None:
        client.set_model_version_tag(name, version, "dp.epsilon_spent", f"{main.privacy.epsilon_spent:.4f}")
        client.set_model_version_tag(name, version, "dp.delta", f"{main.privacy.delta:.3g}")
    return name, version


def _log_comparison(results: dict[str, ModelResult]) -> None:
    mlflow = tracking.mlflow_module()
    summary: dict[str, float] = {}
    for kind, result in results.items():
        for split in EVALUATED:
            for metric in ("roc_auc", "pr_auc", "log_loss", "brier"):
                value = result.metrics.get(f"{split}_{metric}", math.nan)
                if not math.isnan(value):
                    summary[f"{kind}_{split}_{metric}"] = value
        log.info("train: %-15s %s", kind, _describe(result.metrics))
    if DP in results:
        dp, twin = results[DP], results[TWIN]
        summary["dp_epsilon_spent"] = dp.privacy.epsilon_spent
        gap = _test_auc(twin) - _test_auc(dp)
        if not math.isnan(gap):
            summary["dp_test_roc_auc_gap"] = gap
        ratio = _ratio(dp.epoch_seconds, twin.epoch_seconds)
        if not math.isnan(ratio):
            summary["dp_epoch_time_ratio"] = ratio
    mlflow.log_metrics(summary)
    mlflow.set_tag("lakeward.finished_at", datetime.now(UTC).isoformat(timespec="seconds"))


def _ratio(dp_seconds: Sequence[float], twin_seconds: Sequence[float]) -> float:
    if not dp_seconds or not twin_seconds:
        return math.nan
    return float(np.median(dp_seconds) / np.median(twin_seconds))


def _describe(metrics: dict[str, float]) -> str:
    parts = []
    for split in EVALUATED:
        # A part of one class has no ROC or PR AUC: n/a, as the CLI prints it.
        values = [f"{name} {_shown(metrics[f'{split}_{name}'])}"
                  for name in ("roc_auc", "pr_auc", "log_loss", "brier") if f"{split}_{name}" in metrics]
        if values:
            parts.append(f"{split}: " + ", ".join(values))
    return "; ".join(parts)
