"""Training-set rows -> numpy arrays, the preprocessing fitted on train, and the metrics.

Pure numpy and scikit-learn, no torch, so all of it is testable without training::

    data = arrays_from_pandas(frame, features)          # rows ordered by label_id
    prep = Preprocessor.fit(data.train.x)               # median impute + indicators + scale
    z_train = prep.transform(data.train.x)
    scores(data.test.y, model_probabilities)            # roc_auc, pr_auc, log_loss, brier

Features are nullable (no feature row within the TTL, no order yet, no rating): a null
becomes NaN, then the train median, and each column that had nulls in train gets a 0/1
missing indicator. Everything is standardized with train statistics. Fitting on train
only keeps validation and test out of the preprocessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPLITS = ("train", "validation", "test")
LABEL = "churned"
ROW_ID = "label_id"


class TrainingDataError(ValueError):
    """The training-set rows cannot be used for training: says what is missing or wrong."""


@dataclass(frozen=True)
class Split:
    """Features (float64, NaN for null) and labels (0/1) of one split, in ``label_id`` order."""

    x: np.ndarray
    y: np.ndarray

    @property
    def rows(self) -> int:
        """Number of rows."""
        return int(self.y.shape[0])


@dataclass(frozen=True)
class TrainingArrays:
    """The three splits of a training set as arrays."""

    features: tuple[str, ...]
    train: Split
    validation: Split
    test: Split

    def split(self, name: str) -> Split:
        """The split called ``name``."""
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def arrays_from_pandas(frame: pd.DataFrame, features: list[str] | tuple[str, ...]) -> TrainingArrays:
    """Split training-set rows into arrays, ordered by ``label_id`` so runs repeat exactly.

    ``frame`` needs ``label_id``, ``churned`` (0/1), ``split`` and the feature columns.
    """
    needed = [ROW_ID, LABEL, "split", *features]
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        raise TrainingDataError(
            f"training set lacks columns {missing}; it has {sorted(map(str, frame.columns))}"
        )
    unknown = sorted(set(frame["split"].dropna().unique()) - set(SPLITS))
    if unknown or frame["split"].isna().any():
        raise TrainingDataError(f"split must be one of {SPLITS}; found {unknown or [None]}")
    labels = frame[LABEL]
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise TrainingDataError(f"{LABEL} must be 0 or 1 on every row")
    ordered = frame.sort_values(ROW_ID, kind="mergesort")
    parts = {}
    for name in SPLITS:
        rows = ordered[ordered["split"] == name]
        x = rows[list(features)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        parts[name] = Split(x=x, y=rows[LABEL].to_numpy(dtype=np.int64))
    if parts["train"].rows == 0:
        raise TrainingDataError("the train split is empty")
    if len(np.unique(parts["train"].y)) < 2:
        raise TrainingDataError("the train split has only one class; a churn model needs both")
    return TrainingArrays(tuple(features), parts["train"], parts["validation"], parts["test"])


def load_training_arrays(
    spark: SparkSession, table: str, version: int, features: list[str] | tuple[str, ...]
) -> TrainingArrays:
    """Read ``table`` at Delta ``version`` into arrays (the driver holds the whole set)."""
    from pyspark.sql import functions as F

    from lakeward import tables

    frame = tables.read(spark, table, version=version)
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise TrainingDataError(f"{table} v{version} lacks feature columns {missing}")
    columns = [F.col(ROW_ID), F.col(LABEL).cast("int"), F.col("split"),
               *[F.col(name).cast("double") for name in features]]
    return arrays_from_pandas(frame.select(*columns).toPandas(), features)


@dataclass(frozen=True)
class Preprocessor:
    """Median imputation, missing indicators and standardization, fitted on train.

    ``pipeline`` is the fitted scikit-learn form (``SimpleImputer`` + ``StandardScaler``),
    which the baseline model embeds; the arrays are the same statistics for the torch
    model, which embeds them as buffers.
    """

    pipeline: Any

    @classmethod
    def fit(cls, x: np.ndarray) -> Preprocessor:
        """Fit on the train features."""
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        pipeline = Pipeline([
            # keep_empty_features: a column null on every train row stays, imputed as 0,
            # so the model's inputs do not depend on which columns happened to be empty.
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("scale", StandardScaler()),
        ])
        pipeline.fit(x)
        return cls(pipeline)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Imputed and indicator columns, standardized (float32, for torch)."""
        return np.asarray(self.pipeline.transform(x), dtype=np.float32)

    @property
    def fill(self) -> np.ndarray:
        """The value each feature's nulls become (train median)."""
        return np.asarray(self.pipeline.named_steps["impute"].statistics_, dtype=np.float64)

    @property
    def indicator_columns(self) -> np.ndarray:
        """Indexes of the features that get a missing indicator (those null somewhere in train)."""
        indicator = self.pipeline.named_steps["impute"].indicator_
        return np.asarray(indicator.features_, dtype=np.int64)

    @property
    def mean(self) -> np.ndarray:
        """Train mean of every output column."""
        return np.asarray(self.pipeline.named_steps["scale"].mean_, dtype=np.float64)

    @property
    def scale(self) -> np.ndarray:
        """Train standard deviation of every output column (1 where it is 0)."""
        return np.asarray(self.pipeline.named_steps["scale"].scale_, dtype=np.float64)

    def output_names(self, features: tuple[str, ...]) -> list[str]:
        """Names of the transformed columns: the features, then ``<feature>_missing``."""
        return [*features, *[f"{features[i]}_missing" for i in self.indicator_columns]]


def scores(y: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), log loss and Brier score.

    The AUCs are NaN when ``y`` has a single class (they are undefined there).
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    if y.shape[0] == 0:
        return {name: math.nan for name in ("roc_auc", "pr_auc", "log_loss", "brier")}
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else math.nan,
        "pr_auc": float(average_precision_score(y, p)) if both else math.nan,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p, pos_label=1)),
    }
