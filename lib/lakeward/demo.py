"""``lakeward demo``: generate the BiteBridge demo data if absent, run every stage, summarize."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward import bronze, pipeline, tables
from lakeward.config import CONF_DIR_VAR, ENV_VAR, HOME_VAR, Settings
from lakeward.sources.bitebridge import FaultRates, arrival_days, generate, generation_interrupted

log = logging.getLogger(__name__)


def example_queries(settings: Settings) -> tuple[str, ...]:
    """Three queries to try after the demo, on the tables as configured."""
    orders, features = settings.table("silver_orders"), settings.table("gold_user_features")
    return (
        f"SELECT count(*) FROM {orders}",
        f"SELECT event_date, count(*) AS orders, sum(amount) AS spend FROM {orders} "
        "GROUP BY event_date ORDER BY event_date DESC LIMIT 7",
        "SELECT user_key, feature_date, orders_30d, spend_30d, days_since_last_order "
        f"FROM {features} ORDER BY orders_30d DESC, feature_date DESC, user_key LIMIT 5",
    )


def sql_command(settings: Settings, query: str) -> str:
    """A ``lakeward sql`` command line that reads these tables, also pasted into another shell.

    It names the data root and the conf directory when the environment chose
    them, and the environment when it is not the default or the environment
    chose it: without them, a new process would look under ``./.lakeward``
    with the settings of ``$LAKEWARD_ENV`` or local.
    """
    chosen = [
        f"{var}={shlex.quote(str(value))}"
        for var, value in ((HOME_VAR, settings.data_root), (CONF_DIR_VAR, settings.conf_dir))
        if os.environ.get(var)
    ]
    # LAKEWARD_ENV may name another environment in the shell it is pasted into.
    env = ["--env", settings.env] if settings.env != "local" or os.environ.get(ENV_VAR) else []
    return " ".join([*chosen, invoked_as(), *env, "sql", f'"{query}"'])


def invoked_as() -> str:
    """How to run this lakeward again from here: ``lakeward`` when the shell finds it so, else its path.

    After ``make demo`` the command is ``.venv/bin/lakeward``, not on the PATH
    unless the environment is activated.
    """
    program = Path(sys.argv[0])
    if program.name != "lakeward":  # python -m lakeward, spark-submit, a test
        return "lakeward"
    found = shutil.which("lakeward")
    if found is not None and Path(found).resolve() == program.resolve():
        return "lakeward"
    try:
        return shlex.quote(str(program.resolve().relative_to(Path.cwd().resolve())))
    except ValueError:
        return shlex.quote(str(program.resolve()))


def run_demo(spark: SparkSession, settings: Settings) -> str:
    """Run the demo and return the summary text."""
    landing = settings.landing_dir
    interrupted = generation_interrupted(landing)
    if interrupted:
        log.warning("demo: the last generation into %s did not finish; generating again", landing)
    if interrupted or not arrival_days(landing):  # no days also when there is no directory
        demo = settings.demo
        log.info("demo: generating %d users x %d days from %s", demo.users, demo.days, demo.start)
        generate(
            landing,
            seed=demo.seed,
            users=demo.users,
            days=demo.days,
            start=demo.start,
            faults=FaultRates(**settings.generator.faults.model_dump()),
            users_feed=settings.generator.users_feed,
        )
    else:
        log.info("demo: landing files already present under %s", landing)
    # Sixty days of four sources would log some 250 per-file lines above the
    # summary; the per-source totals still show.
    level = bronze.reconcile_log.level
    bronze.reconcile_log.setLevel(logging.WARNING)
    try:
        pipeline.run(spark, settings, "all", pipeline.DateSelection())
    finally:
        bronze.reconcile_log.setLevel(level)
    return summarize(spark, settings)


def summarize(spark: SparkSession, settings: Settings) -> str:
    """Rows per table, quarantine reasons, duplicates dropped, and what to try next."""
    lines = ["", "lakeward demo: done", "", "Rows per table:"]
    for name in sorted(settings.tables.values()):
        if tables.exists(spark, name):
            lines.append(f"  {name:<28} {tables.read(spark, name).count():>10,}")
    lines += ["", "Quarantined rows by reason:"]
    for logical in ("bronze_quarantine", "silver_quarantine"):
        name = settings.table(logical)
        counts = (
            tables.read(spark, name)
            .groupBy("source", "reason")
            .count()
            .orderBy("source", "reason")
            .collect()
        )
        for row in counts:
            lines.append(f"  {name:<20} {row['source']:<20} {row['reason']:<36} {row['count']:>7,}")
    lines += ["", "Duplicates dropped in silver:"]
    ledger = tables.read(spark, settings.table("ops_silver_batches"))
    for row in ledger.groupBy("source").agg(F.sum("rows_duplicate").alias("n")).orderBy("source").collect():
        # A users record silver already holds is not a fault: each day's snapshot repeats it.
        snapshot = row["source"] == "users" and settings.generator.users_feed == "snapshot"
        note = "  (records already current)" if snapshot else ""
        lines.append(f"  {row['source']:<20} {row['n']:>7,}{note}")
    lines += [
        "",
        f"Data root: {settings.data_root}",
        f"  landing files   {settings.landing_dir}",
        f"  Delta tables    {settings.warehouse_dir}",
        f"  catalog         {settings.metastore_dir}",
        "",
        "Try:",
        *[f"  {sql_command(settings, query)}" for query in example_queries(settings)],
        "",
    ]
    return "\n".join(lines)
