"""Ctrl-C while a command runs Spark: cancel its jobs, then stop the command.

PySpark's own SIGINT handler cancels the jobs from inside the signal handler,
through the py4j connection on which the interrupted call is waiting: py4j
then logs tracebacks, and the command fails with an unrelated error. Instead::

    stop_on_interrupt(spark)   # after the session is built (PySpark installs its handler then)
    try:
        ...                    # KeyboardInterrupt once Ctrl-C has been pressed
    finally:
        finish()

On Ctrl-C outside a JVM call, ``KeyboardInterrupt`` is raised at once. During
one, a thread of its own cancels Spark's jobs, so the waiting call fails, and
raises ``KeyboardInterrupt`` in the main thread as soon as it is out of the
call; it goes on cancelling every job started meanwhile. A second Ctrl-C stops
at once.

``KeyboardInterrupt`` reaches the main thread only. Work run side by side goes
through :func:`pool`, whose threads :func:`settle` waits for, still cancelling
the jobs they start, before the command says it has stopped: a thread of a pool
would otherwise go on with its chain of Spark jobs and Delta commits after the
command reported the interruption, and Python waits for it at exit.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

_requested = threading.Event()
_stop_waiting = threading.Event()
_lock = threading.Lock()
_cancellers: list[threading.Thread] = []
_finished = False
# The command is waiting for its pool threads: the cancelling thread no longer
# raises in the main thread, and a Ctrl-C stops the waiting.
_settling = False
# The cancelling thread raised in the main thread: that call of the handler is not a second Ctrl-C.
_raised_by_canceller = False
_POOL_THREADS = "lakeward-pool"


def pool(max_workers: int) -> ThreadPoolExecutor:
    """A thread pool for Spark work side by side, whose threads :func:`settle` waits for."""
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=_POOL_THREADS)


def settle(timeout: float = 300.0) -> bool:
    """After Ctrl-C: wait until the threads of every :func:`pool` have ended, cancelling their jobs.

    A pool left by the interruption has been shut down, so each of its threads
    ends once its task fails on a cancelled job. False when a second Ctrl-C or
    the timeout ended the waiting first.
    """
    global _settling
    if not _requested.is_set():
        return True
    with _lock:
        _settling = True
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if not thread.name.startswith(_POOL_THREADS) or thread is threading.current_thread():
            continue
        while thread.is_alive() and not _stop_waiting.is_set() and time.monotonic() < deadline:
            thread.join(0.1)
        if thread.is_alive():
            log.warning("not waiting any longer for the work still running")
            return False
    return True


def requested() -> bool:
    """Whether Ctrl-C was pressed since :func:`stop_on_interrupt`."""
    return _requested.is_set()


def stop_on_interrupt(spark: Any) -> None:
    """Install the handler (in the main thread only, where Python runs signal handlers)."""
    global _finished, _settling
    if threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        _finished = _settling = False
    _stop_waiting.clear()
    signal.signal(signal.SIGINT, lambda signum, frame: _on_interrupt(spark, frame))


def finish() -> None:
    """Stop cancelling and forget the request, for a caller that goes on (a test).

    An interruption the cancelling thread raised after the command ended is
    ignored.
    """
    global _finished
    with _lock:
        _finished = True
    _requested.clear()
    for thread in _cancellers:
        thread.join(timeout=10)
    _cancellers.clear()


def _on_interrupt(spark: Any, frame: FrameType | None) -> None:
    global _raised_by_canceller
    with _lock:
        if _finished:
            return
        by_canceller, _raised_by_canceller = _raised_by_canceller, False
        if _settling:
            if not by_canceller:
                _stop_waiting.set()
            return
    if _requested.is_set():
        raise KeyboardInterrupt
    _requested.set()
    log.warning("interrupted: cancelling Spark's jobs (Ctrl-C again to stop at once)")
    in_py4j = _in_py4j(frame)
    thread = threading.Thread(
        target=_cancel, args=(spark, not in_py4j), name="lakeward-cancel", daemon=True
    )
    _cancellers.append(thread)
    thread.start()
    if not in_py4j:
        raise KeyboardInterrupt


def _cancel(spark: Any, raised: bool) -> None:
    """Cancel every job until the command ends; raise in the main thread once it is out of the JVM."""
    global _raised_by_canceller
    main = threading.main_thread().ident
    while _requested.is_set():
        try:
            spark.sparkContext.cancelAllJobs()
        except Exception:  # noqa: BLE001 - the process is ending; nothing left to cancel
            return
        if not raised and main is not None and not _in_py4j(sys._current_frames().get(main)):
            with _lock:
                if not _finished and not _settling:
                    # Runs the handler in the main thread, which raises: the request is set.
                    _raised_by_canceller = True
                    _thread.interrupt_main()
                    raised = True
        time.sleep(0.1)


def _in_py4j(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a frame that called it runs py4j's code (a call into the JVM)."""
    marker = f"{os.sep}py4j{os.sep}"
    while frame is not None:
        if marker in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False
