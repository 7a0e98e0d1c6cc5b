"""Run the ``lakeward`` CLI in a new process, as a user does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

LAKEWARD = [sys.executable, "-m", "lakeward"]


def lakeward(
    env: Mapping[str, str], *args: str, cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """``lakeward ARGS`` with ``env``; output captured as text."""
    return subprocess.run(
        [*LAKEWARD, *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
