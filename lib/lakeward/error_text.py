"""An error's text as one line: what the CLI prints, and what a JVM error is reported as."""

from __future__ import annotations

import re

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
