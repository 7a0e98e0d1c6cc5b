"""Ctrl-C during a command: its Spark jobs are cancelled and it ends with one line and exit 130."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakeward import cli, interrupt
from lakeward.cli import EXIT_INTERRUPTED, main


def _interrupt_once_a_job_runs(spark: SparkSession, running: list[int]) -> None:
    """Send Ctrl-C once a Spark job runs, noting its id; after two minutes without one, send it anyway."""
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + 120
    while not running and time.monotonic() < deadline:
        running.extend(tracker.getActiveJobsIds())
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)


def _ended(spark: SparkSession, jobs: list[int]) -> list[str]:
    """The final status of each job; Spark's status store learns it from its listener bus, a little later."""
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + 60
    while True:
        statuses = [str(tracker.getJobInfo(job).status) for job in jobs]
        if "RUNNING" not in statuses or time.monotonic() > deadline:
            return statuses
        time.sleep(0.05)


def test_ctrl_c_cancels_the_query_and_ends_with_one_line(
    spark: SparkSession, data_root: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("LAKEWARD_HOME", str(data_root))
    monkeypatch.delenv("LAKEWARD_ENV", raising=False)
    before = signal.getsignal(signal.SIGINT)
    running: list[int] = []
    threading.Thread(target=_interrupt_once_a_job_runs, args=(spark, running), daemon=True).start()
    with caplog.at_level(logging.WARNING):
        assert main(["sql", "SELECT count(*) FROM range(1000000000000)"]) == EXIT_INTERRUPTED
    assert running, "no Spark job ran before the interrupt"
    assert _ended(spark, running) == ["FAILED"] * len(running)  # what a cancelled job ends as
    assert capsys.readouterr().err.splitlines()[-1] == "lakeward: interrupted"
    # lakeward's handler, not PySpark's, which calls the JVM on the waiting connection.
    assert "interrupted: cancelling Spark's jobs" in caplog.text
    assert "while sending command" not in caplog.text
    assert signal.getsignal(signal.SIGINT) is before
    # The cancelling ended with the command: the session runs jobs again.
    assert spark.range(10).count() == 10


def test_ctrl_c_outside_spark_stops_python_work(spark: SparkSession) -> None:
    before = signal.getsignal(signal.SIGINT)
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
        signal.signal(signal.SIGINT, before)
    assert not interrupt.requested()
    assert spark.range(10).count() == 10


def test_ctrl_c_ends_the_command_once_the_spark_work_beside_it_has_stopped(
    spark: SparkSession, data_root: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LAKEWARD_HOME", str(data_root))
    monkeypatch.delenv("LAKEWARD_ENV", raising=False)
    workers: list[threading.Thread] = []
    next_jobs: list[threading.Thread] = []

    def chain() -> None:  # as a silver source: Spark jobs with driver-side work between them
        workers.append(threading.current_thread())
        while not interrupt.requested():  # the driver-side work Ctrl-C comes in
            time.sleep(0.01)
        time.sleep(0.2)
        next_jobs.append(threading.current_thread())
        spark.range(1_000_000_000_000).count()

    def two_chains(args: object, settings: object) -> int:
        interrupt.stop_on_interrupt(spark)
        with interrupt.pool(2) as pool:  # the main thread waits here, outside any JVM call
            pool.submit(chain)
            pool.submit(chain)
        return 0

    def interrupt_once_both_run() -> None:
        while len(workers) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli, "_dispatch", two_chains)
    threading.Thread(target=interrupt_once_both_run, daemon=True).start()
    assert main(["sql", "SELECT 1"]) == EXIT_INTERRUPTED
    # Before, the command said it was interrupted, and stopped cancelling, while
    # its threads went on with their next jobs.
    assert len(next_jobs) == 2
    assert not any(worker.is_alive() for worker in workers)
    assert capsys.readouterr().err.splitlines()[-1] == "lakeward: interrupted"
    assert spark.range(10).count() == 10


def test_a_second_ctrl_c_stops_the_waiting_for_the_work_beside(spark: SparkSession) -> None:
    before = signal.getsignal(signal.SIGINT)
    release = threading.Event()
    interrupt.stop_on_interrupt(spark)
    try:
        pool = interrupt.pool(1)
        pool.submit(release.wait)  # work that no cancelled job ends
        pool.shutdown(wait=False)  # as a `with` block left by the interruption
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(60)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        assert interrupt.settle() is False
    finally:
        release.set()
        interrupt.finish()
        signal.signal(signal.SIGINT, before)
