"""``lakeward <command>``: every job is reachable from here.

Errors print one line on stderr and exit non-zero: 2 for bad arguments or
config (a malformed date, an unknown environment), 1 for a job that cannot
run or failed (missing landing files, an unknown table in SQL, a failed
quality gate); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from collections import Counter
from collections.abc import Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from lakeward import interrupt, root_lock
from lakeward.config import ConfigError, Settings, is_identifier, load_settings, parse_iso_date
from lakeward.error_text import first_sentences, jvm_error_message, silence_pyspark_error_logs
from lakeward.sources.bitebridge import USERS_FEEDS

if TYPE_CHECKING:
    from lakeward.train import TrainSummary

log = logging.getLogger("lakeward")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = interrupt.EXIT_INTERRUPTED  # as a shell reports a command stopped by SIGINT


class UsageError(ValueError):
    """Arguments that make no sense together."""


def _date(text: str) -> date:
    try:
        return parse_iso_date(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def _run_id(text: str) -> str:
    # MLflow's own rule for a run id; anything else cannot name a run.
    if not re.fullmatch(r"[a-zA-Z0-9][\w\-]{0,255}", text):
        raise argparse.ArgumentTypeError(f"expected an MLflow run id, got {text!r}")
    return text


def _query(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a query or statement, got an empty one")
    return text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _identifier(text: str) -> str:
    if not is_identifier(text):
        raise argparse.ArgumentTypeError(
            f"expected a plain identifier (letters, digits, _; not starting with a digit), got {text!r}"
        )
    return text


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common_options(*, in_command: bool) -> _Parser:
    """``--env`` and ``--debug``, accepted before and after the command name.

    In a command the options have no default, so ``lakeward --env dev run ...``
    is not undone by the command's own (absent) ``--env``.
    """
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if in_command else {}
    common = _Parser(add_help=False)
    common.add_argument("--env", help="configuration environment: local, dev or prod "
                        "(default: $LAKEWARD_ENV or local)", **unset)
    common.add_argument("--debug", action="store_true", help="show tracebacks and Spark's output",
                        **unset)
    return common


def _add_run_options(run: argparse.ArgumentParser, *, full: bool = True) -> None:
    when = run.add_mutually_exclusive_group()
    when.add_argument("--date", type=_date, help="one arrival date, YYYY-MM-DD")
    when.add_argument("--all-dates", action="store_true",
                      help="every pending arrival date (the default without --date)")
    if full:
        when.add_argument("--full", action="store_true",
                          help="gold and all only: recompute gold from everything in silver "
                          "instead of applying what changed since the last run (bronze and "
                          "silver take every pending date)")
    else:
        run.set_defaults(full=False)


STAGES = ("bronze", "silver", "gold", "all")
# The commands that are Spark jobs besides the stages, each with a file under jobs/.
JOB_COMMANDS = ("training-set", "train", "dp-sweep", "predict", "rebuild-training-set")


def job_file(job: str) -> str:
    """``jobs/<job>.py`` as the repository names it (``dp-sweep``: ``jobs/dp_sweep.py``)."""
    return f"jobs/{job.replace('-', '_')}.py"


def build_job_parser(job: str) -> argparse.ArgumentParser:
    """The parser of ``jobs/<job>.py``, under the job's name.

    A stage's job takes ``lakeward run <stage>``'s options, another job its command's.
    """
    if job in JOB_COMMANDS:
        command = _command_parser(build_parser(), job)
        command.prog = job_file(job)
        # Within `lakeward`, --env and --debug have no default in a command (_common_options).
        command.set_defaults(command=job, env=None, debug=False)
        return command
    if job not in STAGES:
        raise ValueError(f"no job {job!r}; jobs: {', '.join([*STAGES, *JOB_COMMANDS])}")
    parser = _Parser(
        prog=job_file(job),
        description=f"spark-submit entry point of `lakeward run {job}`.",
        parents=[_common_options(in_command=False)],
    )
    _add_run_options(parser, full=job in ("gold", "all"))
    parser.set_defaults(command="run", stage=job)
    return parser


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command: argparse.ArgumentParser = commands.choices[name]
    return command


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = _Parser(
        prog="lakeward",
        description="PySpark + Delta Lake medallion pipeline for ML data (BiteBridge example).",
        parents=[_common_options(in_command=False)],
    )
    common = _common_options(in_command=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gen = commands.add_parser("generate", parents=[common],
                              help="write synthetic BiteBridge landing files",
                              description="Write deterministic JSON-lines landing files per "
                              "source per arrival day under $LAKEWARD_HOME/landing.")
    gen.add_argument("--seed", type=int, required=True, help="the same seed writes the same files")
    gen.add_argument("--users", type=_positive, required=True, help="number of users")
    gen.add_argument("--days", type=_positive, required=True,
                     help="days of events; late events arrive up to 3 days after the last")
    gen.add_argument("--start", type=_date, default=None,
                     help="first day, YYYY-MM-DD (default: from config)")
    gen.add_argument("--clean", action="store_true", help="generate without faults")
    gen.add_argument("--users-feed", choices=USERS_FEEDS, default=None,
                     help="users files: every user each day, or only the day's changes "
                     "(default: from config, snapshot)")

    run = commands.add_parser("run", parents=[common], help="run a pipeline stage",
                              description="Run bronze, silver, gold, or all of them in order, "
                              "for one arrival date or (the default) every pending one.")
    run.add_argument("stage", choices=STAGES)
    _add_run_options(run)

    commands.add_parser("demo", parents=[common],
                        help="generate the demo data set, run everything, print a summary",
                        description="Generate a small BiteBridge data set with faults when the "
                        "landing directory holds none (or a generation stopped part way), "
                        "otherwise take the landing files there; run bronze, silver and gold, "
                        "and print a summary. Safe to re-run.")

    sql = commands.add_parser("sql", parents=[common], help="run a Spark SQL query",
                              description="Run a Spark SQL query against the lakeward tables.")
    sql.add_argument("query", type=_query,
                     help="one Spark SQL query or statement (a statement prints what Spark returns, "
                     "if anything)")
    sql.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sql.add_argument("--limit", type=_positive, default=None,
                     help="print at most this many rows (default: every row; the table format "
                     "holds them all in memory to size its columns, json and csv stream them)")

    ts = commands.add_parser("training-set", parents=[common],
                             help="build ml.training_set: churn labels, as-of features, split",
                             description="Label every order whose churn window is fully observed, "
                             "join the gold.user_features row known at the order's time, add a "
                             "leakage-checked split column and write ml.training_set. The Delta "
                             "version of every input is recorded in the table's properties and "
                             "in ops.training_sets.")
    ts.add_argument("--name", type=_identifier, default=None,
                    help="write ml.NAME instead of ml.training_set")
    ts.add_argument("--split", choices=["group", "temporal"], default=None,
                    help="group: by user_key; temporal: train < t1 <= validation < t2 <= test "
                    "(default: from config)")
    ts.add_argument("--t1", type=_date, default=None,
                    help="temporal split: first day of validation (default: computed from the labels)")
    ts.add_argument("--t2", type=_date, default=None, help="temporal split: first day of test")
    _add_ml_commands(commands, common)
    return parser


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _numbers(text: str) -> list[float]:
    parts = [part.strip() for part in text.split(",")]
    if text.strip() and not all(parts):
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    numbers = [_number(part) for part in parts if part]
    repeated = sorted(n for n, times in Counter(numbers).items() if times > 1)
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(f'{n:g}' for n in repeated)} given more than once")
    return numbers


def _add_ml_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """``train``, ``dp-sweep``, ``predict`` and ``rebuild-training-set``."""
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", choices=["logreg", "mlp"], default=None,
                       help="logreg: one linear layer; mlp: one hidden layer (default: from config)")
    model.add_argument("--epochs", type=_positive, default=None, help="passes over the train split")
    model.add_argument("--delta", type=_number, default=None,
                       help="DP target delta, below 1/N (default: from config, else 1/(10 N))")
    model.add_argument("--seed", type=int, default=None,
                       help="seed of weights, sampling and noise, 0 to 4294967295")
    model.add_argument("--training-set", type=_identifier, default=None, metavar="NAME",
                       help="train on ml.NAME instead of ml.training_set")

    train = commands.add_parser(
        "train", parents=[common, model],
        help="train the churn model: DP-SGD, its non-private twin, a scikit-learn baseline",
        description="Train on the train split of the training set `lakeward training-set` wrote and "
        "evaluate on validation and test (ROC-AUC, PR-AUC, log loss, Brier). One MLflow parent run "
        "holds the DP-SGD model (Opacus), its non-private twin and a LogisticRegression baseline, "
        "with every input Delta table and version. The main model is registered.")
    train.add_argument("--epsilon", type=_number, default=None,
                       help="DP target epsilon (default: from config)")
    train.add_argument("--no-dp", action="store_true",
                       help="train only the non-private model and the baseline; register the former")

    sweep = commands.add_parser(
        "dp-sweep", parents=[common, model],
        help="one DP run per epsilon plus the non-private twin, and a plot of test ROC-AUC",
        description="Train one DP-SGD model per epsilon and the non-private twin on the same split, "
        "log them under one MLflow parent run and plot test ROC-AUC against epsilon "
        "($LAKEWARD_HOME/plots/, also logged as an artifact).")
    sweep.add_argument("--epsilons", type=_numbers, default=None, metavar="E1,E2,...",
                       help="comma-separated epsilons, e.g. 0.5,1,2,4,8 (default: from config)")

    predict = commands.add_parser(
        "predict", parents=[common], help="score one day's feature rows into ml.predictions",
        description="Score the gold.user_features rows of one feature date with the model a "
        "`lakeward train` run registered, and write them to ml.predictions with the run id and "
        "model version. Re-running the same run and date replaces that slice.")
    predict.add_argument("--run-id", type=_run_id, required=True,
                         help="the parent run id `lakeward train` logged")
    predict.add_argument("--date", type=_date, required=True, help="feature date, YYYY-MM-DD")

    rebuild = commands.add_parser(
        "rebuild-training-set", parents=[common],
        help="rebuild a run's training set from its logged Delta versions and check its hash",
        description="Read every input table at the Delta version the run logged (time travel), "
        "rebuild the training set and check its content hash against the run's. Fails naming the "
        "table and version when a version is no longer available or the rows differ.")
    rebuild.add_argument("--run-id", type=_run_id, required=True,
                         help="an MLflow run id logged by `lakeward train`")
    rebuild.add_argument("--output", type=_identifier, default=None, metavar="NAME",
                         help="also write the verified rows to ml.NAME")


def main(argv: Sequence[str] | None = None, *, job: str | None = None) -> int:
    """Entry point of the ``lakeward`` console script, and of ``jobs/<job>.py`` with ``job``."""
    args = (build_job_parser(job) if job else build_parser()).parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)
    if args.debug:
        os.environ["LAKEWARD_SPARK_CONSOLE"] = "1"
    else:
        # The error is reported once, below, instead.
        silence_pyspark_error_logs()
        logging.getLogger("py4j").setLevel(logging.WARNING)
    handlers = interrupt.handlers()
    try:
        settings = load_settings(args.env)
        code = _dispatch(args, settings)
        if interrupt.requested():  # pressed as the last JVM call returned
            raise KeyboardInterrupt
        return code
    # The cancelling thread raises in the main thread at most once, and not once
    # settle() has begun; it may land as either clause below starts, hence one retry.
    except KeyboardInterrupt:
        try:
            return _interrupted()
        except KeyboardInterrupt:
            return _interrupted()
    except Exception as err:  # noqa: BLE001 - one clear line instead of a traceback
        try:
            return _failed(err, args)
        except KeyboardInterrupt:
            return _interrupted()
    finally:
        interrupt.finish(restore=handlers)


def _failed(err: Exception, args: argparse.Namespace) -> int:
    if args.debug:
        # The traceback too, but the exit code the error has without --debug.
        traceback.print_exception(err)
    if interrupt.requested():
        # A Spark call failed as its job was cancelled.
        return _interrupted()
    usage = isinstance(err, UsageError | ConfigError)
    said = None if usage else _out_of_memory()
    sys.stderr.write(f"lakeward: error: {said or _one_line(err)}\n")
    return EXIT_USAGE if usage else EXIT_ERROR


def _out_of_memory() -> str | None:
    """What to say when the driver JVM ran out of memory, which the failed call does not tell."""
    if "pyspark" not in sys.modules:  # Spark never started
        return None
    from lakeward.session import out_of_memory

    reason = out_of_memory()
    if reason is None:
        return None
    said = f"Spark's driver ran out of memory (java.lang.OutOfMemoryError: {reason})"
    if reason not in ("Java heap space", "GC overhead limit exceeded"):
        return said
    return (f"{said}; give it more with spark.driver.memory under spark.conf in the config "
            f"(Spark's default is 1g), or with spark-submit's --driver-memory")


def _interrupted() -> int:
    """Say the command stopped once the work it ran side by side has stopped too."""
    settled = interrupt.settle()
    sys.stderr.write(f"lakeward: {interrupt.stopped()}\n")
    if not settled:
        # Python would wait at exit for the threads still running Spark work.
        sys.stderr.flush()
        os._exit(interrupt.exit_code())
    return interrupt.exit_code()


def _one_line(err: BaseException) -> str:
    name = type(err).__name__
    text = str(err).strip()
    if name == "Py4JJavaError":
        # A JVM error pyspark did not convert (e.g. from a collect to Arrow or a
        # row iterator): its text is "An error occurred while calling oN.x".
        text = jvm_error_message(err) or text
    first = first_sentences(text) if text else name
    # lakeward's own errors say every problem they found (six config errors, the allowed
    # names); another library's first line can run to pages.
    if type(err).__module__.startswith("lakeward.") or len(first) < 500:
        return first
    return first[:497] + "..."


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "generate":
        return _generate(args, settings)
    if args.command == "run" and args.full and args.stage not in ("gold", "all"):
        raise UsageError(f"--full applies to gold and all, not to {args.stage}")
    if args.command == "training-set":
        _check_training_set_args(args, settings)
    _check_training_set_name(args, settings)
    if args.command in ("train", "dp-sweep"):
        settings = _training_settings(args, settings)
    from lakeward.privacy.keys import check_key
    from lakeward.session import check_databricks, check_master, get_spark

    # Configuration errors first (exit 2), then missing input (exit 1), and only then
    # anything written under the data root: the lock, the catalog, a local key (by silver).
    if args.command in ("run", "demo"):
        check_key(settings)  # refuse to start without a key where one is required
    if args.command == "demo" or (args.command == "run" and args.stage in ("silver", "all")):
        from lakeward import silver

        silver.check_contracts(settings)
    check_master(settings)
    check_databricks(settings)
    if args.command == "run":
        from lakeward.pipeline import DateSelection, bronze_landing, refuse_future

        selection = DateSelection(None if args.all_dates or args.full else args.date, full=args.full)
        refuse_future(selection)
        if args.stage in ("bronze", "all"):
            bronze_landing(settings, selection)
    if args.command == "sql":
        return _sql(settings, args)
    spark = get_spark(settings)
    interrupt.stop_on_interrupt(spark)
    if args.command == "run":
        from lakeward.pipeline import run

        run(spark, settings, args.stage, selection)
        return 0
    if args.command == "demo":
        from lakeward.demo import run_demo

        sys.stdout.write(run_demo(spark, settings))
        return 0
    if args.command == "training-set":
        return _training_set(spark, args, settings)
    if args.command in ("train", "dp-sweep", "predict", "rebuild-training-set"):
        return _ml_command(spark, args, settings)
    raise UsageError(f"unknown command {args.command}")


def _check_training_set_args(args: argparse.Namespace, settings: Settings) -> None:
    # Before the session starts: a usage error should not cost a Spark start-up.
    split = args.split or settings.training_set.split
    if split == "group" and (args.t1 or args.t2):
        raise UsageError("--t1 and --t2 apply to --split temporal only")
    if (args.t1 is None) != (args.t2 is None):
        raise UsageError("give both --t1 and --t2, or neither to compute them from the labels")
    if args.t1 is not None and not args.t1 < args.t2:
        raise UsageError(f"expected --t1 before --t2, got {args.t1} and {args.t2}")
    if args.t1 is not None:
        from lakeward.splits import check_bounds

        try:
            check_bounds(args.t1, args.t2, timedelta(days=settings.training_set.horizon_days))
        except ValueError as err:
            raise UsageError(f"--t1 {args.t1} --t2 {args.t2}: {err} (training_set.horizon_days)") from None


# The flag that names a training set table, per command that takes one.
_TRAINING_SET_FLAGS = {
    "training-set": "--name",
    "train": "--training-set",
    "dp-sweep": "--training-set",
    "rebuild-training-set": "--output",
}


def _check_training_set_name(args: argparse.Namespace, settings: Settings) -> None:
    """Refuse a training set name the command cannot use, before the session starts."""
    flag = _TRAINING_SET_FLAGS.get(args.command)
    name = getattr(args, flag.lstrip("-").replace("-", "_"), None) if flag else None
    if name is None:
        return
    from lakeward.training_set import TrainingSetError, table_name

    try:
        table_name(settings, name)
    except TrainingSetError as err:
        raise UsageError(f"{flag}: {err}") from None


def _training_set(spark: Any, args: argparse.Namespace, settings: Settings) -> int:
    from lakeward import tables
    from lakeward.training_set import build

    result = build(spark, settings, name=args.name, split=args.split, t1=args.t1, t2=args.t2)
    log.info(
        "training-set: wrote %s version %d: %d rows (%s); inputs %s",
        result.table, result.version, result.rows,
        ", ".join(f"{part} {rows}" for part, rows in result.split_rows.items()),
        tables.describe_versions(result.spec.inputs),
    )
    return 0


def _training_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    # Before the session starts, like every usage check. lakeward.train imports no torch.
    from lakeward.train import PrivacyParameterError, check_sweep_epsilons, with_overrides

    try:
        updated = with_overrides(
            settings, model=args.model, epochs=args.epochs, delta=args.delta, seed=args.seed,
            epsilon=getattr(args, "epsilon", None),
        )
        check_sweep_epsilons(getattr(args, "epsilons", None) or ())
    except (PrivacyParameterError, ValueError) as err:
        raise UsageError(str(err)) from None
    if getattr(args, "epsilons", None) == []:
        raise UsageError("--epsilons needs at least one number, e.g. 0.5,1,2,4,8")
    return updated


def _ml_command(spark: Any, args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "predict":
        from lakeward.predict import predict

        predict(spark, settings, args.run_id, args.date)
        return 0
    if args.command == "rebuild-training-set":
        from lakeward.tracking import rebuild_training_set

        result = rebuild_training_set(spark, settings, args.run_id, args.output)
        log.info("rebuild-training-set: run %s: content hash %s matches%s", result.run_id,
                 result.content_hash,
                 f"; wrote {result.output} version {result.output_version}" if result.output else "")
        return 0
    from lakeward.train import PrivacyParameterError, sweep, train

    try:
        if args.command == "train":
            summary = train(spark, settings, dp=not args.no_dp, table=args.training_set)
        else:
            epsilons = args.epsilons or list(settings.training.sweep_epsilons)
            summary = sweep(spark, settings, epsilons, table=args.training_set)
    except PrivacyParameterError as err:
        raise UsageError(str(err)) from None
    log.info("%s: MLflow parent run %s (experiment %s)", args.command, summary.parent_run_id,
             summary.experiment_id)
    sys.stdout.write(_train_report(summary))
    return 0


def _train_report(summary: TrainSummary) -> str:
    """What ``train`` and ``dp-sweep`` print: the run ids a user passes on, and each model's test ROC-AUC."""
    from lakeward.train import shown_auc

    lines = [f"parent run: {summary.parent_run_id}", f"experiment: {summary.experiment_id}"]
    if summary.model_version is not None:
        lines.append(f"registered model: {summary.model_name} version {summary.model_version}")
    runs = [*summary.results.values(), *summary.sweep]
    names = [result.kind if result.privacy is None else f"{result.kind} eps {result.privacy.epsilon_target:g}"
             for result in runs]
    width = max(map(len, names))
    for name, result in zip(names, runs, strict=True):
        # A split can leave the test part empty; the runs are logged all the same.
        lines.append(f"  {name:<{width}}  run {result.run_id}  test ROC-AUC {shown_auc(result)}")
    if summary.plot is not None:
        lines.append(f"plot: {summary.plot}")
    return "\n".join(lines) + "\n"


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    from lakeward.sources.bitebridge import FaultRates, arrival_days, check_dates, generate, today_utc

    start = args.start or settings.demo.start
    try:
        check_dates(start, args.days)
    except ValueError as err:
        raise UsageError(f"--start/--days: {err}") from None
    # It overwrites landing files that a run on this data root may be reading.
    root_lock.hold(settings)
    faults = FaultRates.none() if args.clean else FaultRates(**settings.generator.faults.model_dump())
    summary = generate(
        settings.landing_dir,
        seed=args.seed,
        users=args.users,
        days=args.days,
        start=start,
        faults=faults,
        users_feed=args.users_feed or settings.generator.users_feed,
    )
    log.info(
        "generate: %d files, %d lines under %s (arrival days %s..%s); faults %s",
        summary.files, sum(summary.lines.values()), settings.landing_dir,
        summary.first_day, summary.last_day, summary.faults,
    )
    if summary.replaced:
        log.warning(
            "generate: %d landing file(s) already there were written over with other content (%s): "
            "bronze takes a changed file as a new batch, so its events are added to those already "
            "taken from the old one (lines that are in both come again, and silver drops them as "
            "duplicates)",
            len(summary.replaced),
            ", ".join(summary.replaced[:5]) + (", ..." if len(summary.replaced) > 5 else ""),
        )
    today = today_utc()
    if summary.last_day > today:
        log.warning(
            "generate: arrival days after today (%s, UTC) up to %s were written; runs take each of "
            "them only once it has come", today, summary.last_day,
        )
    others = [d for d in arrival_days(settings.landing_dir)
              if not summary.first_day <= d <= summary.last_day]
    if others:
        # More landing days are new data arriving, so they stay; say so, since they
        # may also be left from another seed.
        log.warning(
            "generate: the landing directory also holds files of %d other arrival days (%s..%s), "
            "which runs take too (bronze skips those it already ingested); remove %s to start over",
            len(others), others[0], others[-1], settings.landing_dir,
        )
    return 0


def _sql(settings: Settings, args: argparse.Namespace) -> int:
    from lakeward.read_beside import sql
    from lakeward.root_lock import DataRootBusy
    from lakeward.session import get_reader_spark, get_spark
    from lakeward.sql_output import print_rows

    try:
        spark, beside = get_spark(settings), False
    except DataRootBusy as busy:
        log.warning("another process (pid %s) is using the data root; its tables are read by path "
                    "(queries only)", busy.holder)
        spark, beside = get_reader_spark(settings), True
    interrupt.stop_on_interrupt(spark)
    df = sql(spark, settings.warehouse_dir, args.query) if beside else spark.sql(args.query)
    if args.limit is not None:
        df = df.limit(args.limit)
    try:
        print_rows(df, args.format, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`| head`): not an error. Later writes,
        # including the interpreter's final flush, go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
