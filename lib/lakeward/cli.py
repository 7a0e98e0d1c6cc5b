"""``lakeward <command>``: every job is reachable from here.

Errors the user can fix (bad date, missing landing files, unknown table, bad
config) print one line on stderr and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import date
from typing import Any

from lakeward.config import ConfigError, Settings, load_settings

log = logging.getLogger("lakeward")

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """Arguments that make no sense together."""


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", help="configuration environment: local, dev or prod "
                        "(default: $LAKEWARD_ENV or local)")
    common.add_argument("--debug", action="store_true", help="show tracebacks and Spark's output")

    parser = argparse.ArgumentParser(
        prog="lakeward",
        description="PySpark + Delta Lake medallion pipeline for ML data (BiteBridge example).",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gen = commands.add_parser("generate", parents=[common],
                              help="write synthetic BiteBridge landing files",
                              description="Write deterministic JSON-lines landing files per "
                              "source per arrival day under $LAKEWARD_HOME/landing.")
    gen.add_argument("--seed", type=int, required=True)
    gen.add_argument("--users", type=_positive, required=True)
    gen.add_argument("--days", type=_positive, required=True)
    gen.add_argument("--start", type=_date, default=None, help="first day (default: from config)")
    gen.add_argument("--clean", action="store_true", help="generate without faults")

    run = commands.add_parser("run", parents=[common], help="run a pipeline stage",
                              description="Run bronze, silver, gold, or all of them in order.")
    run.add_argument("stage", choices=["bronze", "silver", "gold", "all"])
    when = run.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", type=_date, help="one arrival date, YYYY-MM-DD")
    when.add_argument("--all-dates", action="store_true", help="every pending arrival date")
    when.add_argument("--full", action="store_true",
                      help="gold and all only: recompute gold from everything in silver instead of "
                      "applying what changed since the last run (bronze and silver take every "
                      "pending date)")

    commands.add_parser("demo", parents=[common],
                        help="generate the demo data set, run everything, print a summary",
                        description="On an empty data root: generate a small BiteBridge data "
                        "set with faults, run bronze, silver and gold, and print a summary. "
                        "Safe to re-run.")

    sql = commands.add_parser("sql", parents=[common], help="run a Spark SQL query",
                              description="Run a Spark SQL query against the lakeward tables.")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sql.add_argument("--limit", type=_positive, default=1000, help="rows to print (default 1000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lakeward`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)
    if args.debug:
        os.environ["LAKEWARD_SPARK_CONSOLE"] = "1"
    else:
        # pyspark logs every captured JVM error as a multi-line JSON record; the
        # error is reported once, below, instead.
        logging.getLogger("SQLQueryContextLogger").disabled = True
        logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        settings = load_settings(args.env)
        return _dispatch(args, settings)
    except Exception as err:  # noqa: BLE001 - one clear line instead of a traceback
        if args.debug:
            raise
        sys.stderr.write(f"lakeward: error: {_one_line(err)}\n")
        return EXIT_USAGE if isinstance(err, UsageError | ConfigError) else EXIT_ERROR


def _one_line(err: BaseException) -> str:
    name = type(err).__name__
    text = str(err).strip()
    if name == "AnalysisException" or "Exception" in name and hasattr(err, "getErrorClass"):
        text = text.split("\n")[0]
    first = text.splitlines()[0] if text else name
    return first if len(first) < 500 else first[:497] + "..."


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "generate":
        return _generate(args, settings)
    if args.command == "run" and args.full and args.stage not in ("gold", "all"):
        raise UsageError(f"--full applies to gold and all, not to {args.stage}")
    if args.command in ("run", "demo"):
        from lakeward.privacy.keys import pii_key

        pii_key(settings)  # refuse to start without a key where one is required
    from lakeward.session import get_spark

    spark = get_spark(settings)
    if args.command == "run":
        from lakeward.pipeline import DateSelection, run

        day = None if args.all_dates or args.full else args.date
        run(spark, settings, args.stage, DateSelection(day, full=args.full))
        return 0
    if args.command == "demo":
        from lakeward.demo import run_demo

        sys.stdout.write(run_demo(spark, settings))
        return 0
    if args.command == "sql":
        return _sql(spark, args)
    raise UsageError(f"unknown command {args.command}")


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    from lakeward.sources.bitebridge import FaultRates, generate

    faults = FaultRates.none() if args.clean else FaultRates(**settings.generator.faults.model_dump())
    summary = generate(
        settings.landing_dir,
        seed=args.seed,
        users=args.users,
        days=args.days,
        start=args.start or settings.demo.start,
        faults=faults,
    )
    log.info(
        "generate: %d files, %d lines under %s (arrival days %s..%s); faults %s",
        summary.files, sum(summary.lines.values()), settings.landing_dir,
        summary.first_day, summary.last_day, summary.faults,
    )
    return 0


def _sql(spark: Any, args: argparse.Namespace) -> int:
    df = spark.sql(args.query)
    rows = df.limit(args.limit + 1).collect()
    if len(rows) > args.limit:
        rows = rows[: args.limit]
        log.info("sql: output truncated to %d rows (use --limit)", args.limit)
    columns = df.columns
    out = sys.stdout
    if args.format == "json":
        for row in rows:
            out.write(json.dumps(row.asDict(recursive=True), default=str, ensure_ascii=False) + "\n")
    elif args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    else:
        out.write(format_table(columns, [list(row) for row in rows]))
    return 0


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, like ``DataFrame.show`` without truncation."""
    cells = [["NULL" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    body = [rule, line(columns), rule, *[line(r) for r in cells], rule]
    return "\n".join(body) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})\n"


if __name__ == "__main__":
    raise SystemExit(main())
