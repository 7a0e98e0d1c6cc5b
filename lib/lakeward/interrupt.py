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
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

_requested = threading.Event()
_lock = threading.Lock()
_cancellers: list[threading.Thread] = []
_finished = False


def requested() -> bool:
    """Whether Ctrl-C was pressed since :func:`stop_on_interrupt`."""
    return _requested.is_set()


def stop_on_interrupt(spark: Any) -> None:
    """Install the handler (in the main thread only, where Python runs signal handlers)."""
    global _finished
    if threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        _finished = False
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
    with _lock:
        if _finished:
            return
    if _requested.is_set():
        raise KeyboardInterrupt
    _requested.set()
    log.warning("interrupted: cancelling Spark's jobs (Ctrl-C again to stop at once)")
    thread = threading.Thread(target=_cancel, args=(spark,), name="lakeward-cancel", daemon=True)
    _cancellers.append(thread)
    thread.start()
    if not _in_py4j(frame):
        raise KeyboardInterrupt


def _cancel(spark: Any) -> None:
    main = threading.main_thread().ident
    raised = False
    while _requested.is_set():
        try:
            spark.sparkContext.cancelAllJobs()
        except Exception:  # noqa: BLE001 - the process is ending; nothing left to cancel
            return
        if not raised and main is not None and not _in_py4j(sys._current_frames().get(main)):
            with _lock:
                if not _finished:
                    # Runs the handler in the main thread, which raises: the request is set.
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
