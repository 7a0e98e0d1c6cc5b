"""An error's text as one line: what the CLI prints, and what a JVM error is reported as."""

from __future__ import annotations

import re

# A continuation of a broken sentence starts in lower case ("... available to" /
# "this table (...)"); a query context ("== SQL ... =="), the query, a plan or a
# marker line ("^^^") does not.
_CONTINUATION = re.compile(r"[a-z]")


def first_sentences(text: str) -> str:
    """The first line of an error's text, joined with the lines that finish its sentence.

    Spark and Delta break a sentence across lines; what follows a finished
    line (a plan, a query context) is left out.
    """
    lines = [line.strip() for line in text.strip().splitlines()]
    taken = lines[:1]
    for line in lines[1:5]:
        finished = taken[-1].endswith((".", ";", ":", "!", "?")) or "SQLSTATE:" in taken[-1]
        if finished or not _CONTINUATION.match(line):
            break
        taken.append(line)
    return " ".join(taken)
