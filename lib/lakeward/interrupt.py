"""Ctrl-C (or SIGTERM) while a command runs Spark: cancel its jobs, then stop the command.

PySpark's own SIGINT handler cancels the jobs from inside the signal handler,
through the py4j connection on which the interrupted call is waiting: py4j
then logs tracebacks, and the command fails with an unrelated error. Instead::

    stop_on_interrupt(spark)   # after the session is built (PySpark installs its handler then)
    try:
        ...                    # KeyboardInterrupt once Ctrl-C has been pressed
    except KeyboardInterrupt:
        settle()               # the work run side by side has stopped too
    finally:
        finish()

On Ctrl-C outside a JVM call, ``KeyboardInterrupt`` is raised at once. During
one, a thread of its own cancels Spark's jobs, so the waiting call fails, and
raises ``KeyboardInterrupt`` in the main thread once (as soon as it is out of
the call); it goes on cancelling every job started meanwhile. A second Ctrl-C
ends the process at once, with exit code 130.

SIGTERM (``kill``, ``timeout``, a scheduler stopping a task) is taken the same
way, and the command then exits 143, as a shell reports a process it ended;
Python's default would end the process on the spot, without a word.

``KeyboardInterrupt`` reaches the main thread only. Work run side by side goes
through :func:`pool`, whose tasks :func:`settle` waits for, still cancelling
the jobs they start: a task would otherwise go on with its chain of Spark jobs
and Delta commits after the command reported the interruption. A task not
started by then does not start.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested = threading.Event()
# The signal of the request: it names the stop and gives the exit code.
_signum = signal.SIGINT
# Reentrant: the handler takes it too, and may run in the main thread while that holds it.
_lock = threading.RLock()
_cancellers: list[threading.Thread] = []
_finished = False
# The command waits for its pool tasks: the cancelling thread no longer raises in the main thread.
_settling = False
# finish() is putting the caller's handlers back: the command has ended.
_restoring = False
# The cancelling thread raised in the main thread: that call of the handler is not a second Ctrl-C.
_raised_by_canceller = False
# Tasks of every pool() running now. Counted in the pool threads only: a
# KeyboardInterrupt reaches the main thread, and would break a count kept there.
_running = 0
_task_ended = threading.Condition()
_pools: weakref.WeakSet[_Pool] = weakref.WeakSet()
# The longest the main thread waits in one call, so a signal is handled in time.
_HANDLER_DELAY = 0.1


class Interrupted(Exception):
    """A pool task that had not started when Ctrl-C was pressed, and did not run."""


class _Pool(ThreadPoolExecutor):
    # Set by settle(), and kept: finish() forgets the request, and a task a pool
    # thread had taken off its queue would otherwise start after the command ended.
    stopped = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(_counted, self, fn, *args, **kwargs)
        future.__class__ = _SlicedFuture  # the executor makes the future itself: only its class can change
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)
        if wait:
            for thread in list(self._threads):
                while thread.is_alive():
                    thread.join(_HANDLER_DELAY)


class _SlicedFuture(Future[Any]):
    """A pool task's future whose waits end every :data:`_HANDLER_DELAY` seconds and go on.

    The kernel may hand a signal sent to the process to a thread other than
    the main one (one that does not block it: not lakeward's). Python then runs
    the handler only when the main thread next runs Python, which a wait
    without a timeout (``result()``, a pool's ``shutdown``) puts off until
    the task ends: Ctrl-C would do nothing while a task runs.
    """

    def result(self, timeout: float | None = None) -> Any:
        _wait_in_slices(self, timeout)
        return super().result(None if self.done() else 0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        _wait_in_slices(self, timeout)
        return super().exception(None if self.done() else 0)


def _wait_in_slices(future: Future[Any], timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while not future.done():
        left = _HANDLER_DELAY if deadline is None else min(_HANDLER_DELAY, deadline - time.monotonic())
        if left <= 0:
            return
        wait_for([future], timeout=left)


def _counted(pool: _Pool, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # Counted before the check: once settle() reads 0, a task that starts after does not run.
    global _running
    with _task_ended:
        _running += 1
        stopped = pool.stopped
    try:
        if stopped or _requested.is_set():
            raise Interrupted("not started: interrupted")
        return fn(*args, **kwargs)
    finally:
        with _task_ended:
            _running -= 1
            _task_ended.notify_all()


def pool(max_workers: int) -> ThreadPoolExecutor:
    """A thread pool for Spark work side by side, whose tasks :func:`settle` waits for.

    Its threads block SIGINT and SIGTERM (:func:`leave_signals_to_main`), and a
    process started from one of them begins with both blocked: start Spark
    and other processes from the main thread.
    """
    started = _Pool(max_workers=max_workers, thread_name_prefix="lakeward-pool",
                    initializer=leave_signals_to_main)
    with _task_ended:  # pool threads open pools too, while settle() may be walking them
        _pools.add(started)
    return started


def leave_signals_to_main() -> None:
    """Block SIGINT and SIGTERM in the calling thread, one lakeward started.

    The kernel hands a signal sent to the process to any thread that does not
    block it, and Python runs the handler only in the main thread, once that
    thread runs Python again: a main thread waiting for this one would not learn of it.
    """
    if hasattr(signal, "pthread_sigmask"):  # not on Windows, where no other thread gets them
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


def settle(timeout: float = 300.0) -> bool:
    """After Ctrl-C: wait until no task of any :func:`pool` runs, cancelling their jobs.

    Counted by task, not by thread: a thread whose ``join`` the interruption
    broke counts as stopped to Python while it still runs. A task that starts
    later does not run. False when the timeout came first.
    """
    global _settling
    if not _requested.is_set():
        return True
    with _lock:
        _settling = True
    deadline = time.monotonic() + timeout
    with _task_ended:
        for stopping in list(_pools):
            stopping.stopped = True
        # In short waits: a signal the kernel handed to another thread runs its handler
        # only once the main thread runs Python again, and a second Ctrl-C must not wait.
        while _running and (left := deadline - time.monotonic()) > 0:
            _task_ended.wait(min(left, _HANDLER_DELAY))
        ended = _running == 0
    if not ended:
        log.warning("not waiting any longer for the work still running")
    return ended


def requested() -> bool:
    """Whether Ctrl-C was pressed (or SIGTERM came) since :func:`stop_on_interrupt`."""
    return _requested.is_set()


def exit_code() -> int:
    """The exit code of a command the request stopped: 128 plus the signal's number."""
    return 128 + int(_signum)


def stopped() -> str:
    """The word the command ends with, ``interrupted`` (Ctrl-C) or ``terminated`` (SIGTERM)."""
    return "terminated" if _signum == signal.SIGTERM else "interrupted"


def handlers() -> dict[int, Any]:
    """The handlers :func:`stop_on_interrupt` replaces, for a caller to put back."""
    return {signum: signal.getsignal(signum) for signum in _SIGNALS}


def stop_on_interrupt(spark: Any) -> None:
    """Install the handler (in the main thread only, where Python runs signal handlers)."""
    global _finished, _settling, _raised_by_canceller, _signum
    if threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        _finished = _settling = _raised_by_canceller = False
        _signum = signal.SIGINT
    for signum in _SIGNALS:
        signal.signal(signum, lambda signum, frame: _on_interrupt(spark, frame, signum))


def finish(restore: dict[int, Any] | None = None) -> None:
    """Stop cancelling and forget the request, then put back the ``restore`` handlers.

    Until they are back, an interruption the cancelling thread raised late and
    a Ctrl-C are ignored (the command has ended), and SIGTERM ends the process
    at once. Without ``restore`` (a caller that goes on, a test), a signal
    that comes later while the handler is still installed does what Python's
    default would (``KeyboardInterrupt``, or the end of the process for SIGTERM).
    """
    global _finished, _signum, _restoring
    with _lock:
        _finished = True
        _restoring = restore is not None
        _signum = signal.SIGINT
    _requested.clear()
    for thread in _cancellers:
        thread.join(timeout=10)
    _cancellers.clear()
    if restore is not None and threading.current_thread() is threading.main_thread():
        for signum, handler in restore.items():
            # None: a handler not installed from Python, which cannot be put back.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    with _lock:
        _restoring = False


def _on_interrupt(spark: Any, frame: FrameType | None, signum: int = signal.SIGINT) -> None:
    global _raised_by_canceller, _signum
    with _lock:
        finished, settling, restoring = _finished, _settling, _restoring
        by_canceller, _raised_by_canceller = _raised_by_canceller, False
    if by_canceller:
        if finished or settling:  # raised late, after the command ended or began to settle
            return
        raise KeyboardInterrupt
    if finished and restoring:
        if signum == signal.SIGTERM:  # the command's work is done: nothing left to wait for
            sys.stderr.write("lakeward: terminated\n")
            sys.stderr.flush()
            os._exit(128 + signal.SIGTERM)
        return
    if finished:
        # The command has ended and its caller did not put the handlers back: what
        # Python would do, since no command is left to stop.
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt
    if _requested.is_set():
        # A second signal: no more waiting for cancelled work, nor for Python's
        # exit, which would wait for the pool threads still running.
        sys.stderr.write(f"lakeward: {stopped()}\n")
        sys.stderr.flush()
        os._exit(exit_code())
    with _lock:
        _signum = signal.Signals(signum)
    _requested.set()
    log.warning("%s: cancelling Spark's jobs (Ctrl-C or SIGTERM again stops at once)", stopped())
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
    leave_signals_to_main()
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
