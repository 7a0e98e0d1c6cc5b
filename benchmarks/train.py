"""Training benchmark on the demo data set: DP cost in time and in ROC-AUC, and `lakeward train` wall time.

    .venv/bin/python benchmarks/train.py --home /tmp/lakeward-train-bench --runs 3 --epsilon 3

On a data root without a training set it first runs `lakeward demo` and
`lakeward training-set` (timed, reported apart). Then it runs `lakeward train --epsilon E`
``--runs`` times, each in a fresh process (JVM start, MLflow store, three models, logging,
registration included), and reads back from MLflow, per run:

- the median epoch time of the DP-SGD model and of its non-private twin, trained in the
  same process on the same split (goal: DP at most 2.5x the twin);
- the test ROC-AUC of both (goal: DP at epsilon 3 within 0.05 of the twin), and the
  validation ROC-AUC, on which settings are to be chosen (the test split only reports);
- the whole command's wall time.

Prints a markdown table per run and the medians. Results go in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAKEWARD = [sys.executable, "-m", "lakeward"]
PARENT = re.compile(r"train: MLflow parent run ([0-9a-f]{32})")


def run(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    log.write_text(result.stderr)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(command[2:])} failed ({result.returncode}); see {log}:\n{tail}")
    return seconds, result.stderr


def prepare(home: Path, env: dict[str, str]) -> None:
    if (home / "warehouse" / "ml.db" / "training_set").exists():
        print(f"reusing the training set under {home}")
        return
    home.mkdir(parents=True, exist_ok=True)
    demo, _ = run([*LAKEWARD, "demo"], env, home, home / "bench-demo.log")
    built, _ = run([*LAKEWARD, "training-set"], env, home, home / "bench-training-set.log")
    print(f"prepared: lakeward demo {demo:.1f} s, lakeward training-set {built:.1f} s")


def read_runs(home: Path, parents: list[str]) -> list[dict[str, float]]:
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    rows = []
    for parent_id in parents:
        parent = client.get_run(parent_id)
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
        )
        kinds = {child.data.tags["lakeward.model_kind"]: child.data for child in children}
        dp, twin, baseline = kinds["dp"], kinds["non_private"], kinds["sklearn_logreg"]
        rows.append({
            "train_rows": float(parent.data.params["rows.train"]),
            "test_rows": float(parent.data.params["rows.test"]),
            "dp_epoch": dp.metrics["epoch_seconds_median"],
            "twin_epoch": twin.metrics["epoch_seconds_median"],
            "dp_auc": dp.metrics["test_roc_auc"],
            "twin_auc": twin.metrics["test_roc_auc"],
            "dp_val_auc": dp.metrics["validation_roc_auc"],
            "twin_val_auc": twin.metrics["validation_roc_auc"],
            "baseline_auc": baseline.metrics["test_roc_auc"],
            **{f"{kind}_{metric}": data.metrics[f"test_{metric}"]
               for kind, data in (("dp", dp), ("twin", twin), ("baseline", baseline))
               for metric in ("log_loss", "brier")},
            "epsilon_spent": dp.metrics["dp_epsilon_spent"],
            "noise": float(dp.params["dp.noise_multiplier"]),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="data root (prepared if empty)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more `lakeward train` arguments, e.g. --extra --model mlp")
    args = parser.parse_args()
    home = args.home.resolve()
    env = {**os.environ, "LAKEWARD_HOME": str(home)}
    env.pop("LAKEWARD_PII_KEY", None)  # local env: the demo's generated key under the data root
    prepare(home, env)

    walls, parents = [], []
    for index in range(args.runs):
        command = [*LAKEWARD, "train", "--epsilon", str(args.epsilon), *args.extra]
        seconds, stderr = run(command, env, home, home / f"bench-train-{index + 1}.log")
        match = PARENT.search(stderr)
        if match is None:
            raise SystemExit(f"no parent run id in the output of run {index + 1}")
        walls.append(seconds)
        parents.append(match.group(1))
        print(f"run {index + 1}: {seconds:.1f} s, parent run {match.group(1)}")

    rows = read_runs(home, parents)
    first = rows[0]
    print(f"\ntraining set: {first['train_rows']:.0f} train rows, {first['test_rows']:.0f} test rows; "
          f"epsilon {args.epsilon:g} (spent {first['epsilon_spent']:.3f}, "
          f"noise multiplier {first['noise']:.3f})\n")
    print("| run | train wall (s) | DP epoch (s) | twin epoch (s) | DP/twin | DP test AUC | twin test AUC "
          "| gap | sklearn test AUC | validation gap |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for index, (wall, row) in enumerate(zip(walls, rows, strict=True), start=1):
        print(f"| {index} | {wall:.1f} | {row['dp_epoch']:.3f} | {row['twin_epoch']:.3f} | "
              f"{row['dp_epoch'] / row['twin_epoch']:.2f} | {row['dp_auc']:.4f} | {row['twin_auc']:.4f} | "
              f"{row['twin_auc'] - row['dp_auc']:.4f} | {row['baseline_auc']:.4f} | "
              f"{row['twin_val_auc'] - row['dp_val_auc']:.4f} |")
    dp_epoch = statistics.median(r["dp_epoch"] for r in rows)
    twin_epoch = statistics.median(r["twin_epoch"] for r in rows)
    gap = statistics.median(r["twin_auc"] - r["dp_auc"] for r in rows)
    val_gap = statistics.median(r["twin_val_auc"] - r["dp_val_auc"] for r in rows)
    print(f"| median | {statistics.median(walls):.1f} | {dp_epoch:.3f} | {twin_epoch:.3f} | "
          f"{dp_epoch / twin_epoch:.2f} | | | {gap:.4f} | | {val_gap:.4f} |")
    # The twin and the baseline are seeded; the DP model's noise is not (a secret seed per run).
    print("\ntest log loss / Brier score, median of the runs: " + ", ".join(
        f"{label} {statistics.median(r[f'{kind}_log_loss'] for r in rows):.4f} / "
        f"{statistics.median(r[f'{kind}_brier'] for r in rows):.4f}"
        for kind, label in (("dp", "DP"), ("twin", "twin"), ("baseline", "sklearn"))))


if __name__ == "__main__":
    main()
