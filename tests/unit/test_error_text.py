"""An error's text as one line, without Spark: the JVM side is the shape py4j and pyspark give it."""

from __future__ import annotations

from lakeward.error_text import first_sentences, jvm_error_message, one_line


class _JavaThrowable:
    """What py4j hands back for a Java exception: getMessage and getCause."""

    def __init__(self, message: str | None, cause: _JavaThrowable | None = None) -> None:
        self._message, self._cause = message, cause

    def getMessage(self) -> str | None:  # noqa: N802 - the Java name
        return self._message

    def getCause(self) -> _JavaThrowable | None:  # noqa: N802 - the Java name
        return self._cause


class _Py4JError(Exception):
    def __init__(self, java: _JavaThrowable) -> None:
        super().__init__("An error occurred while calling o74.getResult")
        self.java_exception = java


def test_a_sentence_broken_across_lines_is_joined_and_the_plan_left_out() -> None:
    text = ("[DELTA_X] The table is not available to\nthis reader. SQLSTATE: 42000\n"
            "== SQL ==\nSELECT 1\n^^^")
    assert first_sentences(text) == "[DELTA_X] The table is not available to this reader. SQLSTATE: 42000"


def test_a_jvm_error_is_its_innermost_message() -> None:
    error = _Py4JError(_JavaThrowable("Job aborted", _JavaThrowable("File gone: part-0.parquet")))
    assert jvm_error_message(error) == "File gone: part-0.parquet"
    assert one_line(error) == "File gone: part-0.parquet"
    # A cause with no message of its own leaves the last one that had one.
    assert jvm_error_message(_Py4JError(_JavaThrowable("outer", _JavaThrowable(None)))) == "outer"


def test_an_error_without_text_is_its_class_name() -> None:
    assert jvm_error_message(ValueError("x")) is None
    assert one_line(ValueError("First line.\nSecond line.")) == "First line."
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("   ")) == "RuntimeError"
