"""The DP sweep plot: test ROC-AUC against epsilon, with the non-private twin as a line.

Drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no GUI
backend and no global matplotlib state, so it works on headless machines and in tests::

    plot_sweep([(0.5, 0.61), (1.0, 0.66), (8.0, 0.70)], twin_roc_auc=0.71, path=Path("sweep.png"))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def plot_sweep(points: Sequence[tuple[float, float]], twin_roc_auc: float, path: Path,
               *, title: str = "") -> Path:
    """Write the PNG to ``path`` (parents created) and return it.

    A NaN ROC-AUC (no test part of both classes) is left out: no point, no twin line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ordered = sorted(points)
    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([eps for eps, _ in ordered], [auc for _, auc in ordered], marker="o", label="DP-SGD")
    if not math.isnan(twin_roc_auc):
        axes.axhline(twin_roc_auc, color="grey", linestyle="--",
                     label=f"non-private twin ({twin_roc_auc:.3f})")
    if all(math.isnan(value) for value in [twin_roc_auc, *(auc for _, auc in ordered)]):
        axes.text(0.5, 0.5, "no test ROC-AUC: the test part is empty or of one class",
                  transform=axes.transAxes, ha="center", va="center")
    axes.set_xscale("log")
    axes.set_xticks([eps for eps, _ in ordered], labels=[f"{eps:g}" for eps, _ in ordered])
    axes.minorticks_off()
    axes.set_xlabel("epsilon (log scale)")
    axes.set_ylabel("test ROC-AUC")
    axes.set_title(f"Privacy vs utility{': ' + title if title else ''}", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
