"""Unit tests for the CLI's argument handling and output conversion (no Spark)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from lakeward.cli import (
    EXIT_USAGE,
    JOB_COMMANDS,
    STAGES,
    _one_line,
    _train_report,
    build_job_parser,
    build_parser,
    job_file,
    main,
)
from lakeward.config import ConfigError, load_settings
from lakeward.demo import invoked_as, sql_command
from lakeward.sql_output import format_table, json_ready
from lakeward.train import ModelResult, TrainSummary


@pytest.mark.parametrize(
    ("argv", "env", "debug"),
    [
        (["--env", "dev", "--debug", "run", "gold", "--full"], "dev", True),
        (["run", "gold", "--full", "--env", "prod", "--debug"], "prod", True),
        (["--env", "dev", "run", "gold", "--full", "--env", "prod"], "prod", False),
        (["sql", "SELECT 1"], None, False),
    ],
)
def test_global_options_count_before_and_after_the_command(
    argv: list[str], env: str | None, debug: bool
) -> None:
    args = build_parser().parse_args(argv)
    assert (args.env, args.debug) == (env, debug)


@pytest.mark.parametrize(
    ("argv", "day", "all_dates", "full"),
    [
        (["run", "gold"], None, False, False),
        (["run", "all", "--all-dates"], None, True, False),
        (["run", "silver", "--date", "2026-03-01"], "2026-03-01", False, False),
        (["run", "gold", "--full"], None, False, True),
    ],
)
def test_run_takes_every_pending_date_unless_told_otherwise(
    argv: list[str], day: str | None, all_dates: bool, full: bool
) -> None:
    args = build_parser().parse_args(argv)
    assert (None if args.date is None else args.date.isoformat(), args.all_dates, args.full) == (
        day, all_dates, full
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "bronze", "--date", "notadate"], "lakeward run: error: argument --date"),
        # Python reads these as dates too; the documented form is YYYY-MM-DD only.
        (["run", "bronze", "--date", "20260105"], "lakeward run: error: argument --date"),
        (["run", "bronze", "--date", "2026-W02-1"], "lakeward run: error: argument --date"),
        (["generate", "--seed", "1", "--users", "2", "--days", "1", "--start", "2026-02-30"],
         "lakeward generate: error: argument --start"),
        ([], "lakeward: error: the following arguments are required"),
        (["sql", "SELECT 1", "--format", "xml"], "lakeward sql: error: argument --format"),
        (["sql", "  \n"], "lakeward sql: error: argument query: expected a query or statement"),
        (["run", "gold", "--date", "2026-03-01", "--full"], "lakeward run: error: argument --full"),
        # Before, these started Spark and failed with exit 1, as a run that does not exist.
        (["predict", "--run-id", "", "--date", "2026-03-01"], "lakeward predict: error: argument --run-id"),
        (["rebuild-training-set", "--run-id", "a b"],
         "lakeward rebuild-training-set: error: argument --run-id"),
    ],
)
def test_argument_errors_are_one_line_on_stderr(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message), err


@pytest.mark.parametrize(
    ("stage", "argv", "day", "all_dates", "full"),
    [
        ("bronze", ["--date", "2026-03-01", "--env", "dev"], "2026-03-01", False, False),
        ("silver", ["--all-dates"], None, True, False),
        ("gold", ["--full", "--debug"], None, False, True),
        ("all", [], None, False, False),
    ],
)
def test_a_job_takes_the_options_of_its_stage(
    stage: str, argv: list[str], day: str | None, all_dates: bool, full: bool
) -> None:
    args = build_job_parser(stage).parse_args(argv)
    assert (args.command, args.stage) == ("run", stage)
    assert (None if args.date is None else args.date.isoformat(), args.all_dates, args.full) == (
        day, all_dates, full
    )


@pytest.mark.parametrize(
    ("stage", "argv", "message"),
    [
        # Before, a job's errors and help were those of `lakeward run`, whose stage argument a job refuses.
        ("bronze", ["--full"],
         "jobs/bronze.py: error: unrecognized arguments: --full (see jobs/bronze.py --help)"),
        ("gold", ["bronze"], "jobs/gold.py: error: unrecognized arguments: bronze"),
        ("silver", ["--date", "2026-13-01"], "jobs/silver.py: error: argument --date"),
    ],
)
def test_a_job_s_argument_errors_name_the_job(
    stage: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        build_job_parser(stage).parse_args(argv)
    assert stop.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message), err


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("training-set", ["--name", "churn_v2", "--split", "temporal", "--t1", "2026-02-01"]),
        ("train", ["--epsilon", "2", "--model", "mlp", "--epochs", "3", "--no-dp", "--env", "dev"]),
        ("dp-sweep", ["--epsilons", "0.5,1", "--delta", "1e-6", "--debug"]),
        ("predict", ["--run-id", "0123456789abcdef0123456789abcdef", "--date", "2026-03-01"]),
        ("rebuild-training-set", ["--run-id", "0123456789abcdef0123456789abcdef", "--output", "again"]),
        ("train", []),
    ],
)
def test_a_command_s_job_parses_as_the_command_does(command: str, argv: list[str]) -> None:
    as_command = build_parser().parse_args([command, *argv])
    as_job = build_job_parser(command).parse_args(argv)
    assert vars(as_job) == vars(as_command)
    assert as_job.command == command


@pytest.mark.parametrize("job", [*STAGES, *JOB_COMMANDS])
def test_every_job_has_its_file_and_help(job: str) -> None:
    # No Spark: the file's --help stops in the argument parser.
    root = Path(__file__).resolve().parents[2]
    shown = subprocess.run([sys.executable, job_file(job), "--help"], cwd=root,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: {job_file(job)} [-h] [--env ENV] [--debug]"), shown.stdout
    refused = subprocess.run([sys.executable, job_file(job), "--no-such-option"], cwd=root,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == EXIT_USAGE
    assert refused.stderr.startswith(f"{job_file(job)}: error: "), refused.stderr


def test_a_job_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="no job 'sql'"):
        build_job_parser("sql")


def test_a_job_s_help_shows_its_own_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_job_parser("silver").parse_args(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jobs/silver.py [-h] [--env ENV] [--debug] [--date DATE | --all-dates]")
    assert "{bronze,silver,gold,all}" not in out and "--full" not in out


def test_lakeward_s_own_errors_are_never_cut_and_others_are() -> None:
    problems = "; ".join(f"conf/dev.yml: training.key_{n}: Input should be a valid number" for n in range(12))
    assert _one_line(ConfigError(problems)) == problems
    long_line = "x" * 900
    assert _one_line(ValueError(long_line)) == long_line[:497] + "..."


def test_an_error_sentence_broken_across_lines_is_kept_whole_and_what_follows_is_not() -> None:
    delta = (
        "[DELTA_TIMESTAMP_EARLIER_THAN_COMMIT_RETENTION] The provided timestamp (2020-01-01 00:00:00.0) "
        "is before the earliest version available to\nthis table (2026-12-05 13:13:10.009). Please use "
        "a timestamp after 2026-12-05 13:13:10.\n== SQL (line 1, position 1) ==\nSELECT 1"
    )
    assert _one_line(ValueError(delta)) == (
        "[DELTA_TIMESTAMP_EARLIER_THAN_COMMIT_RETENTION] The provided timestamp (2020-01-01 00:00:00.0) "
        "is before the earliest version available to this table (2026-12-05 13:13:10.009). Please use "
        "a timestamp after 2026-12-05 13:13:10."
    )
    plan = "[TABLE_OR_VIEW_NOT_FOUND] The table `x` cannot be found. SQLSTATE: 42P01; line 1 pos 1;\n'Project"
    assert _one_line(ValueError(plan)) == plan.splitlines()[0]
    runtime = (
        '[DIVIDE_BY_ZERO] Division by zero. If necessary set "spark.sql.ansi.enabled" to "false" '
        "to bypass this error. SQLSTATE: 22012\n== SQL (line 1, position 8) ==\nSELECT 1/0\n       ^^^\n"
    )
    assert _one_line(ValueError(runtime)) == runtime.splitlines()[0]
    lower = "[X] The value of\nconf was wrong SQLSTATE: 42000\nselect 1"  # a query in lower case
    assert _one_line(ValueError(lower)) == "[X] The value of conf was wrong SQLSTATE: 42000"
    named = ("[DELTA_CONFIGURE_SPARK_SESSION_WITH_EXTENSION_AND_CATALOG] This Delta operation requires "
             "the SparkSession to be configured with the\nDeltaSparkSessionExtension and the "
             "DeltaCatalog. SQLSTATE: 56038")
    assert _one_line(ValueError(named)) == named.replace("\n", " ")
    # Without a SQLSTATE, a line that does not start in lower case begins something else.
    unmarked = "could not read the file at\n/tmp/x\nCaused by"
    assert _one_line(ValueError(unmarked)) == "could not read the file at"


def test_a_driver_out_of_memory_is_said_with_what_to_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lakeward import cli, session

    log = tmp_path / "spark.log"
    log.write_text("an earlier run: java.lang.OutOfMemoryError: Metaspace\n")
    monkeypatch.setattr(session, "_jvm_output", (log, log.stat().st_size))
    stopped = [True]
    monkeypatch.setattr(session, "_context_stopped", lambda: stopped[0])
    args = build_parser().parse_args(["run", "bronze"])
    shut = RuntimeError("Job 43 cancelled because SparkContext was shut down")
    # Only what this process's JVM wrote counts.
    assert cli._failed(shut, args) == 1
    assert capsys.readouterr().err == f"lakeward: error: {shut}\n"
    with log.open("a") as out:
        out.write('Exception in thread "Executor task launch worker" java.lang.OutOfMemoryError: '
                  "Java heap space\n\tat java.base/java.util.Arrays.copyOf(Arrays.java:3541)\n")
    assert cli._failed(shut, args) == 1
    assert capsys.readouterr().err == (
        "lakeward: error: Spark's driver ran out of memory (java.lang.OutOfMemoryError: Java heap "
        "space); give it more with spark.driver.memory under spark.conf in the config (Spark's "
        "default is 1g), or with spark-submit's --driver-memory\n"
    )
    # A session still running did not run out: another process writing the log did.
    stopped[0] = False
    assert cli._failed(shut, args) == 1
    assert capsys.readouterr().err == f"lakeward: error: {shut}\n"
    # An error of the arguments or the config keeps its own line and exit code.
    stopped[0] = True
    assert cli._failed(ConfigError("conf/local.yml: bad"), args) == 2
    assert capsys.readouterr().err == "lakeward: error: conf/local.yml: bad\n"


def test_json_keeps_exact_decimals_as_numbers_and_others_as_text() -> None:
    record = {"spend": Decimal("21.85"), "nested": [{"x": Decimal("0.10")}],
              "wide": Decimal("12345678901234567890.123456789"), "n": 3}
    assert json_ready(record) == {"spend": 21.85, "nested": [{"x": 0.1}],
                                   "wide": Decimal("12345678901234567890.123456789"), "n": 3}


def test_a_table_cell_keeps_its_line_breaks_on_one_line() -> None:
    table = format_table(["note", "n"], [["two\nlines\tand a tab", None]])
    assert table.splitlines()[3] == "| two\\nlines\\tand a tab | NULL |"
    # A column name too (`SELECT 1 AS `a<newline>b``).
    assert format_table(["a\nb"], [[1]]).splitlines()[1:4] == ["| a\\nb |", "+------+", "| 1    |"]


def test_the_demo_suggests_lakeward_as_the_user_can_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = tmp_path / ".venv" / "bin" / "lakeward"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [str(program), "demo"])
    assert invoked_as() == ".venv/bin/lakeward"
    monkeypatch.setenv("PATH", f"{program.parent}:/usr/bin:/bin")
    assert invoked_as() == "lakeward"
    monkeypatch.setattr(sys, "argv", ["/elsewhere/lakeward/cli.py", "demo"])
    assert invoked_as() == "lakeward"


@pytest.mark.parametrize("stage", ["bronze", "silver", "gold", "all"])
def test_a_date_after_today_is_refused_by_every_stage_before_anything_is_written(
    stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LAKEWARD_HOME", str(home))
    monkeypatch.delenv("LAKEWARD_ENV", raising=False)
    before = datetime.now(UTC).date()
    assert main(["run", stage, "--date", "2999-01-01"]) == 1
    # Today as the command saw it: the day it started or, across midnight UTC, the next.
    assert capsys.readouterr().err.splitlines() in [
        [f"lakeward: error: 2999-01-01 is after today ({today}, UTC): its landing files "
         "are taken on that day or later, since nothing can have arrived on it yet"]
        for today in (before, datetime.now(UTC).date())
    ]
    assert not home.exists()


def test_the_demo_suggests_commands_that_name_the_data_root_and_environment_it_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["lakeward", "demo"])
    monkeypatch.delenv("LAKEWARD_HOME", raising=False)
    monkeypatch.delenv("LAKEWARD_CONF_DIR", raising=False)
    monkeypatch.delenv("LAKEWARD_ENV", raising=False)
    settings = load_settings("local", data_root=tmp_path / "home")
    assert sql_command(settings, "SELECT 1") == 'lakeward sql "SELECT 1"'
    # A program path with a space is quoted once.
    program = tmp_path / "my venv" / "lakeward"
    monkeypatch.setattr(sys, "argv", [str(program), "demo"])
    assert sql_command(settings, "SELECT 1") == f"'{program}' sql \"SELECT 1\""
    monkeypatch.setattr(sys, "argv", ["lakeward", "demo"])
    monkeypatch.setenv("LAKEWARD_ENV", "local")  # the shell it is pasted into may say otherwise
    assert sql_command(settings, "SELECT 1") == 'lakeward --env local sql "SELECT 1"'
    monkeypatch.setenv("LAKEWARD_HOME", str(tmp_path / "my home"))
    monkeypatch.setenv("LAKEWARD_CONF_DIR", str(settings.conf_dir))
    elsewhere = load_settings("dev").model_copy(update={"data_root": tmp_path / "my home"})
    assert sql_command(elsewhere, "SELECT 1") == (
        f"LAKEWARD_HOME='{tmp_path}/my home' LAKEWARD_CONF_DIR={settings.conf_dir} "
        'lakeward --env dev sql "SELECT 1"'
    )


def test_train_prints_the_run_ids_a_user_passes_on() -> None:
    def result(kind: str, run_id: str, auc: float, epsilon: float | None = None) -> ModelResult:
        privacy = None if epsilon is None else SimpleNamespace(epsilon_target=epsilon)
        return ModelResult(kind, run_id, {"test_roc_auc": auc}, privacy=privacy)

    parent, dp, twin, logreg = "a" * 32, "b" * 32, "c" * 32, "d" * 32
    results = {"dp": result("dp", dp, 0.7, 3.0), "non_private": result("non_private", twin, 0.75),
               "sklearn_logreg": result("sklearn_logreg", logreg, 0.74)}
    summary = TrainSummary(parent, "7", SimpleNamespace(), results, model_name="churn", model_version="2")
    lines = _train_report(summary).splitlines()
    assert lines[:3] == [f"parent run: {parent}", "experiment: 7", "registered model: churn version 2"]
    assert lines[3:] == [
        f"  dp eps 3        run {dp}  test ROC-AUC 0.7000",
        f"  non_private     run {twin}  test ROC-AUC 0.7500",
        f"  sklearn_logreg  run {logreg}  test ROC-AUC 0.7400",
    ]
    # The first run id on stdout is the parent's.
    assert _train_report(summary).index(parent) < _train_report(summary).index(dp)


def test_train_report_says_n_a_for_a_model_without_a_test_part() -> None:
    empty = ModelResult("non_private", "e" * 32, {"validation_roc_auc": 0.6})
    report = _train_report(TrainSummary("f" * 32, "1", SimpleNamespace(), {"non_private": empty}))
    assert report.splitlines()[-1] == f"  non_private  run {'e' * 32}  test ROC-AUC n/a"
