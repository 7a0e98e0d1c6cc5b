"""Ctrl-C during a command: its Spark jobs are cancelled and it ends with one line and exit 130."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from lakeward import cli, interrupt
from lakeward.cli import EXIT_INTERRUPTED, main


def _interrupt_once_a_job_runs(
    spark: SparkSession, running: list[int], signum: int = signal.SIGINT
) -> None:
    """Send Ctrl-C once a Spark job runs, noting its id; after two minutes without one, send it anyway."""
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + 120
    while not running and time.monotonic() < deadline:
        running.extend(tracker.getActiveJobsIds())
        time.sleep(0.05)
    os.kill(os.getpid(), signum)


def _ended(spark: SparkSession, jobs: list[int]) -> list[str]:
    """The final status of each job; Spark's status store learns it from its listener bus, a little later."""
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + 60
    while True:
        statuses = [str(tracker.getJobInfo(job).status) for job in jobs]
        if "RUNNING" not in statuses or time.monotonic() > deadline:
            return statuses
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGINT, EXIT_INTERRUPTED, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_ctrl_c_or_sigterm_cancels_the_query_and_ends_with_one_line(
    spark: SparkSession, data_root: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    signum: int, code: int, word: str,
) -> None:
    monkeypatch.setenv("LAKEWARD_HOME", str(data_root))
    monkeypatch.delenv("LAKEWARD_ENV", raising=False)
    before = interrupt.handlers()
    running: list[int] = []
    threading.Thread(target=_interrupt_once_a_job_runs, args=(spark, running, signum), daemon=True).start()
    with caplog.at_level(logging.WARNING):
        assert main(["sql", "SELECT count(*) FROM range(1000000000000)"]) == code
    assert running, "no Spark job ran before the signal"
    assert _ended(spark, running) == ["FAILED"] * len(running)  # what a cancelled job ends as
    assert capsys.readouterr().err.splitlines()[-1] == f"lakeward: {word}"
    # lakeward's handler, not PySpark's, which calls the JVM on the waiting connection.
    assert f"{word}: cancelling Spark's jobs" in caplog.text
    assert "while sending command" not in caplog.text
    assert interrupt.handlers() == before
    # The cancelling ended with the command: the session runs jobs again.
    assert spark.range(10).count() == 10


def test_ctrl_c_outside_spark_stops_python_work(spark: SparkSession) -> None:
    before = interrupt.handlers()
    interrupt.stop_on_interrupt(spark)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
            while time.monotonic() - started < 60:  # training, generating: no JVM call
                sum(range(1000))
        assert interrupt.requested()
    finally:
        interrupt.finish()
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert not interrupt.requested()
    assert spark.range(10).count() == 10


def test_ctrl_c_ends_the_command_once_the_spark_work_beside_it_has_stopped(
    spark: SparkSession, data_root: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LAKEWARD_HOME", str(data_root))
    monkeypatch.delenv("LAKEWARD_ENV", raising=False)
    started: list[str] = []
    next_jobs: list[str] = []
    ended: list[str] = []

    def chain(name: str) -> None:  # as a silver source: Spark jobs with driver-side work between them
        started.append(name)
        try:
            while not interrupt.requested():  # the driver-side work Ctrl-C comes in
                time.sleep(0.01)
            time.sleep(0.2)
            next_jobs.append(name)
            spark.range(1_000_000_000_000).count()
        finally:
            ended.append(name)

    def two_chains_and_one_queued(args: object, settings: object) -> int:
        interrupt.stop_on_interrupt(spark)
        with interrupt.pool(2) as pool:  # the main thread waits here, outside any JVM call
            for name in ("a", "b", "queued"):
                pool.submit(chain, name)
        return 0

    def interrupt_once_both_run() -> None:
        while len(started) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli, "_dispatch", two_chains_and_one_queued)
    threading.Thread(target=interrupt_once_both_run, daemon=True).start()
    assert main(["sql", "SELECT 1"]) == EXIT_INTERRUPTED
    # Before, the command said it was interrupted, and stopped cancelling, while
    # its threads went on with their next jobs.
    assert sorted(next_jobs) == sorted(ended) == ["a", "b"]
    assert "queued" not in started  # a task still queued at Ctrl-C does not start
    assert capsys.readouterr().err.splitlines()[-1] == "lakeward: interrupted"
    assert spark.range(10).count() == 10


def test_ctrl_c_as_the_command_ends_changes_nothing(
    spark: SparkSession, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKEWARD_HOME", str(data_root))
    monkeypatch.delenv("LAKEWARD_ENV", raising=False)
    before = interrupt.handlers()

    def dispatch(args: Any, settings: Any) -> int:
        interrupt.stop_on_interrupt(spark)
        # A thread the ending command waits for, as it waits for the cancelling one,
        # until Ctrl-C has been pressed: the handler is still lakeward's then.
        pressed = threading.Event()
        ending = threading.Thread(target=pressed.wait, args=(60,))
        ending.start()
        interrupt._cancellers.append(ending)

        def press_as_it_ends() -> None:  # once finish() has begun putting the handlers back
            deadline = time.monotonic() + 30
            while not interrupt._restoring and time.monotonic() < deadline:
                time.sleep(0.01)
            if interrupt._restoring:  # else pytest's own handler would get it
                os.kill(os.getpid(), signal.SIGINT)
                sent.append(True)
                time.sleep(0.5)  # for the handler to have run
            pressed.set()

        threading.Thread(target=press_as_it_ends, daemon=True).start()
        return 0

    sent: list[bool] = []
    monkeypatch.setattr(cli, "_dispatch", dispatch)
    assert main(["sql", "SELECT 1"]) == 0
    assert sent == [True]
    assert interrupt.handlers() == before


def test_a_signal_after_the_command_does_what_python_would(tmp_path: Path) -> None:
    # A caller that did not put the handlers back: SIGTERM still ends the process.
    script = (
        "import os, signal, time\n"
        "from lakeward import interrupt\n"
        "interrupt.stop_on_interrupt(object())\n"
        "interrupt.finish()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == -signal.SIGTERM, done.stderr


_PRESSED_TWICE = """
import faulthandler, os, shutil, signal, subprocess, sys, threading, time
from lakeward import cli, interrupt
from lakeward.session import get_spark

# Should the command hang, the stacks of every Python thread and of the JVM say where.
faulthandler.dump_traceback_later({dump_after}, exit=False)

def dump_jvm_threads():
    interrupt.leave_signals_to_main()
    time.sleep({dump_after})
    children = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout
    for pid in children.split():
        subprocess.run([shutil.which("jcmd") or "jcmd", pid, "Thread.print"], stdout=sys.stderr,
                       stderr=sys.stderr, timeout=60, check=False)

threading.Thread(target=dump_jvm_threads, daemon=True).start()

def dispatch(args, settings):
    interrupt.stop_on_interrupt({session})
    started = threading.Event()
    # Neither lakeward's nor waited for: the kernel may hand it a signal sent to the process.
    bystander = threading.Thread(target=time.sleep, args=(600,), daemon=True)
    bystander.start()

    def ignores_cancelling():  # Python work, which no cancelled job ends
        started.set()
        time.sleep(600)

    def press_twice():
        started.wait()
        time.sleep(0.5)  # the main thread is waiting for the task by then
        os.kill(os.getpid(), signal.SIGINT)
        while not interrupt.requested():  # two signals before the handler runs are one press
            time.sleep(0.01)
        time.sleep(1)
        {second_press}

    threading.Thread(target=press_twice, daemon=True).start()
    {main_thread}
    with interrupt.pool(1) as pool:
        pool.submit(ignores_cancelling)
    return 0

cli._dispatch = dispatch
sys.exit(cli.main(["sql", "SELECT 1"]))
"""


# Without the second Ctrl-C the command waits five minutes for its work (settle's
# timeout), then ends with the same code and line: a timeout tells.
@pytest.mark.parametrize(("session", "second_press", "main_thread", "timeout"), [
    # A new JVM and the Delta jars on a new data root: only against a hang.
    ("get_spark(settings)", "os.kill(os.getpid(), signal.SIGINT)", "pass", 600),
    # Before, the main thread learnt of this one only when the work it waited for ended:
    # the signal did not wake it. No Spark here (no job to cancel): seconds.
    ("object()", "signal.pthread_kill(bystander.ident, signal.SIGINT)", "pass", 120),
    # The kernel hands a signal sent to the process to the main thread, unless (rarely, and
    # twice in CI) it passes it to another: here always, both presses. Waiting on the pool
    # without a timeout, the main thread never ran the handler.
    ("object()", "os.kill(os.getpid(), signal.SIGINT)",
     "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])", 120),
], ids=["to the process", "to another thread", "both to other threads"])
def test_a_second_ctrl_c_ends_the_command_at_once(
    tmp_path: Path, session: str, second_press: str, main_thread: str, timeout: int
) -> None:
    env = {**os.environ, "LAKEWARD_HOME": str(tmp_path)}
    env.pop("LAKEWARD_ENV", None)
    script = _PRESSED_TWICE.format(session=session, second_press=second_press, main_thread=main_thread,
                                   dump_after=timeout - 60)
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as hung:
        said = hung.stderr.decode(errors="replace") if isinstance(hung.stderr, bytes) else hung.stderr
        pytest.fail(f"still running after {timeout} s; its stderr, with its threads' stacks:\n{said}")
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert done.stderr.splitlines()[-1] == "lakeward: interrupted"
    assert "Traceback" not in done.stderr


def test_pool_threads_leave_ctrl_c_to_the_main_thread() -> None:
    # Blocked there, a signal sent to the process reaches a thread that can act on it.
    with interrupt.pool(1) as pool:
        blocked = pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result()
    assert {signal.SIGINT, signal.SIGTERM} <= blocked
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_task_taken_from_the_queue_after_settle_does_not_start() -> None:
    # finish() forgets the request once the command ends; the pools settle() stopped stay stopped.
    ran: list[int] = []
    with interrupt.pool(1) as pool:
        interrupt._requested.set()
        try:
            assert interrupt.settle(timeout=5)
        finally:
            interrupt.finish()
        assert not interrupt.requested()
        late = pool.submit(ran.append, 1)
        with pytest.raises(interrupt.Interrupted):
            late.result()
    assert ran == []
    with interrupt.pool(1) as pool:  # a new command's pool runs its tasks
        pool.submit(ran.append, 2).result()
    assert ran == [2]
