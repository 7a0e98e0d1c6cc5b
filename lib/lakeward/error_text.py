"""An error's text as one line: what the CLI prints, and what a JVM error is reported as."""

from __future__ import annotations

import logging
import re

# pyspark logs each error it captures from the JVM, with its stack trace, as a JSON record on
# stderr through loggers that do not propagate: the SQL one, and the DataFrame one for errors
# of DataFrame calls.
PYSPARK_ERROR_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")


def silence_pyspark_error_logs() -> None:
    """Turn off pyspark's own log records of captured errors: the caller reports each error once.

    Called before pyspark makes them, it makes them plain, disabled loggers, which pyspark then
    uses: they must stay off (pyspark passes them keywords only its own logger takes).
    """
    for name in PYSPARK_ERROR_LOGGERS:
        logger = logging.getLogger(name)
        logger.disabled = True
        # Also above every level, should a logging setup enable it again.
        logger.setLevel(logging.CRITICAL + 1)


# Without a SQLSTATE to end the message, a continuation of a broken sentence is
# taken to start in lower case ("... available to" / "this table (...)"); a query
# context ("== SQL ... =="), a query, a plan or a marker line ("^^^") does not.
_CONTINUATION = re.compile(r"[a-z]")
_ENDS = (".", ";", ":", "!", "?")


def first_sentences(text: str) -> str:
    """The first line of an error's text, joined with the lines that finish its sentence.

    Spark and Delta break a sentence across lines, and end their message with
    ``SQLSTATE: <code>``, after which come the query context or the plan: those
    are left out. A line that starts with a name or a value
    ("... configured with the" / "DeltaSparkSessionExtension ...") still
    continues the sentence when a SQLSTATE ends the message.
    """
    lines = [line.strip() for line in text.strip().splitlines()]
    with_state = any("SQLSTATE:" in line for line in lines)
    taken = lines[:1]
    for line in lines[1:8]:
        previous = taken[-1]
        if not line or previous.endswith(_ENDS) or "SQLSTATE:" in previous:
            break
        if not with_state and not _CONTINUATION.match(line):
            break
        taken.append(line)
    return " ".join(taken)


def jvm_error_message(error: BaseException) -> str | None:
    """The first line of the innermost cause's message of a JVM error; None for other errors.

    The outer errors only wrap it ("An error occurred while calling o74.getResult",
    "Error while instantiating ..."). Takes an error pyspark converted (its causes
    are converted too) or one it left as py4j raised it.
    """
    message = None
    java = getattr(error, "java_exception", None)
    if java is not None:
        for _ in range(20):  # a cause chain is short; this only guards against a cycle
            if java is None:
                break
            message = str(java.getMessage() or "").strip() or message
            java = java.getCause()
    else:
        cause: object = error if hasattr(error, "_desc") else None  # pyspark's CapturedException
        while cause is not None:
            message = str(getattr(cause, "_desc", "") or "").strip() or message
            cause = getattr(cause, "_cause", None)
    return first_sentences(message) if message else None


def one_line(error: BaseException) -> str:
    """The error's first sentence on one line: a JVM error's innermost cause's, else its own text's."""
    text = jvm_error_message(error) or str(error).strip()
    return first_sentences(text) if text else type(error).__name__
