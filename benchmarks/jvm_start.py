"""Start-up of a short command in a new process, with and without the JVM's class archive.

Times ``lakeward sql QUERY`` end to end (Python, JVM, Spark, the query, exit),
each in a new process on one data root:

1. once with class data sharing on and no archive yet: that start writes it at exit;
2. then ``--runs`` times each without the archive (``spark.class_data_sharing:
   false``) and with it, alternating.

The archive goes to a temporary directory (``spark.class_data_dir``), so the
installation's own archive is neither used nor changed.

    .venv/bin/python benchmarks/jvm_start.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lakeward.config import default_conf_dir


def _conf(root: Path, name: str, replacements: dict[str, str]) -> Path:
    conf = root / name
    shutil.copytree(default_conf_dir(), conf)
    base = (conf / "base.yml").read_text(encoding="utf-8")
    for old, new in replacements.items():
        if old not in base:
            raise SystemExit(f"{conf / 'base.yml'} has no line {old!r} to change")
        base = base.replace(old, new)
    (conf / "base.yml").write_text(base, encoding="utf-8")
    return conf


def _timed(env: dict[str, str], conf: Path, query: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "lakeward", "sql", query],
        env={**env, "LAKEWARD_CONF_DIR": str(conf)}, capture_output=True, text=True, check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"lakeward sql failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--query", default="SELECT 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lakeward-jvm-start-") as tmp:
        root = Path(tmp)
        archives = root / "archives"
        on = _conf(root, "on", {"class_data_dir: null": f"class_data_dir: {archives}"})
        off = _conf(root, "off", {"class_data_sharing: true": "class_data_sharing: false"})
        env = {**os.environ, "LAKEWARD_HOME": str(root / "home"), "LAKEWARD_ENV": "local"}
        _timed(env, off, args.query)  # the data root's first start resolves the Delta jars
        first = _timed(env, on, args.query)
        size = sum(path.stat().st_size for path in archives.glob("*.jsa"))
        print(f"first start, writing the archive ({size / 2**20:.0f} MiB): {first:.2f} s")
        times: dict[str, list[float]] = {"without archive": [], "with archive": []}
        for _ in range(args.runs):
            times["without archive"].append(_timed(env, off, args.query))
            times["with archive"].append(_timed(env, on, args.query))
        for variant, runs in times.items():
            print(f"{variant}: median {statistics.median(runs):.2f} s, runs "
                  + " / ".join(f"{run:.2f}" for run in runs))
        ratio = statistics.median(times["with archive"]) / statistics.median(times["without archive"])
        print(f"with / without: {ratio:.2f}")


if __name__ == "__main__":
    main()
