"""The data root a benchmark writes into: it must hold nothing yet.

The benchmarks that work in ``LAKEWARD_HOME`` (default ``./.lakeward``) generate landing
files and write synthetic tables there; on a data root in use they would add them to real
bronze, silver and gold tables, and time appends to tables they had not made.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lakeward.config import Settings, load_settings


def empty_data_root() -> Settings:
    """Local settings, or exit with a message when their data root already holds something."""
    settings = load_settings("local")
    root = settings.data_root
    if root.exists() and any(root.iterdir()):
        raise SystemExit(
            f"{Path(sys.argv[0]).name}: the data root {root} is not empty; this benchmark writes "
            "landing files and tables into it. Give it an empty one: LAKEWARD_HOME=$(mktemp -d)"
        )
    return settings
