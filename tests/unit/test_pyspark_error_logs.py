"""pyspark's own log records of captured errors stay off: lakeward reports each error once, in one line."""

from __future__ import annotations

import pytest
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession


def test_an_error_of_a_dataframe_call_prints_no_record_with_its_stack_trace(
    spark: SparkSession, capfd: pytest.CaptureFixture[str]
) -> None:
    # conftest silences them as the CLI does (error_text.silence_pyspark_error_logs); without
    # it pyspark prints a JSON record with the JVM stack trace for this error.
    with pytest.raises(AnalysisException, match="UNRESOLVED_COLUMN"):
        spark.range(1).select("no_such_column").collect()
    with pytest.raises(AnalysisException, match="TABLE_OR_VIEW_NOT_FOUND"):
        spark.sql("SELECT * FROM no_such_schema.no_such_table")
    assert "QueryContextLogger" not in capfd.readouterr().err
