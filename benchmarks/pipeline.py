"""End-to-end pipeline benchmark: `lakeward run all --all-dates` against a bare Spark floor.

The floor is the least any pipeline has to do with the same input: one Spark process
reads every landing file as JSON and writes one Delta table. Both run as fresh processes
(JVM start included) on the same landing files, each on an empty warehouse, so the
ratio is pipeline / floor. The driver's peak memory is the largest resident set of the
Python driver plus its JVM, sampled from /proc every 0.2 s.

    .venv/bin/python benchmarks/pipeline.py --users 20000 --days 120 --runs 3

The users source is a changes feed here unless ``--users-feed snapshot``: the benchmark
measures events, and a daily snapshot of 25k users over 170 days is 3.4M lines, more
than three times the events. The default keeps the data of the same size and kind as in
the earlier results (not byte for byte: the generator's draws changed with the snapshot).

Prints one markdown table row per variant. Results go in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

FLOOR = """
import sys
from lakeward.config import load_settings
from lakeward.session import get_spark
settings = load_settings("local")
spark = get_spark(settings)
spark.sql("CREATE SCHEMA IF NOT EXISTS floor")
df = spark.read.json(str(settings.landing_dir / "*" / "*.jsonl"))
df.write.format("delta").mode("overwrite").saveAsTable("floor.events")
"""


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            with open(f"/proc/{current}/task/{current}/children") as children:
                stack += [int(c) for c in children.read().split()]
        except OSError:
            continue
    return total


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, int]:
    """Wall seconds and peak tree RSS of one command; its stderr (stage log lines) goes to ``log``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    sampler.join()
    elapsed = time.perf_counter() - start
    log.write_bytes(err)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err.decode()[-2000:]}")
    return elapsed, peak


def fresh_home(landing: Path, root: Path, name: str) -> Path:
    home = root / name
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / "landing").symlink_to(landing)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the landing files, both data roots and the stage logs go "
                             "(default: a new directory under the system's temp dir, kept and named)")
    parser.add_argument("--users-feed", choices=["changes", "snapshot"], default="changes")
    args = parser.parse_args()

    from lakeward.sources.bitebridge import FaultRates, generate

    root = args.workdir or Path(tempfile.mkdtemp(prefix="lakeward-bench-"))
    print(f"workdir {root}: landing files, data roots and <variant>-run<N>.log; remove it when done",
          file=sys.stderr)
    landing = root / "landing"
    started = time.perf_counter()
    summary = generate(landing, seed=args.seed, users=args.users, days=args.days,
                       start=date(2026, 1, 1), faults=FaultRates(), users_feed=args.users_feed)
    events = sum(summary.lines.values())
    size = sum(p.stat().st_size for p in landing.rglob("*.jsonl"))
    print(f"generated {events:,} lines ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)

    env = dict(os.environ, LAKEWARD_ENV="local", LAKEWARD_PII_KEY="benchmark-key-0123456789abcdef")
    lakeward = [sys.executable, "-m", "lakeward", "run", "all", "--all-dates"]
    results: dict[str, list[tuple[float, int]]] = {"floor": [], "pipeline": []}
    for run in range(args.runs):
        for variant, command in (("floor", [sys.executable, "-c", FLOOR]), ("pipeline", lakeward)):
            home = fresh_home(landing, root, f"home-{variant}")
            log = root / f"{variant}-run{run + 1}.log"
            results[variant].append(timed(command, {**env, "LAKEWARD_HOME": str(home)}, log))
            seconds, peak = results[variant][-1]
            print(f"run {run + 1} {variant}: {seconds:.1f} s, peak {peak / 2**20:.0f} MiB", file=sys.stderr)

    floor = statistics.median(s for s, _ in results["floor"])
    print("| variant | events | median wall (s) | events/s | peak driver RSS (MiB) | ratio to floor |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, runs in results.items():
        wall = statistics.median(s for s, _ in runs)
        peak = statistics.median(p for _, p in runs) / 2**20
        row = [variant, f"{events:,}", f"{wall:.1f}", f"{events / wall:,.0f}", f"{peak:.0f}",
               f"{wall / floor:.2f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
