"""Why spark-submit or the java launcher stopped, read from what one start wrote to the JVM log."""

from pathlib import Path

import pytest

from lakeward.session import _refusal, _stopped_because

EARLIER = 'Exception in thread "main" org.apache.spark.SparkException: an earlier start\n'


@pytest.mark.parametrize(("output", "reason"), [
    ("Invalid maximum heap size: -Xmxlots\nError: Could not create the Java Virtual Machine.\n"
     "Error: A fatal exception has occurred. Program will exit.\n", "Invalid maximum heap size: -Xmxlots"),
    ("Error occurred during initialization of VM\nToo small maximum heap\n", "Too small maximum heap"),
    ('Exception in thread "main" org.apache.spark.SparkException: Executor memory must be a positive number\n'
     "\tat org.apache.spark.deploy.SparkSubmitArguments.error(SparkSubmitArguments.scala:640)\n",
     "Executor memory must be a positive number"),
    ("Error: Master must either be yarn or start with spark, k8s, or local\n",
     "Master must either be yarn or start with spark, k8s, or local"),
    # A failed resolution is no refusal: Maven may fetch what Spark's resolver could not.
    ('Exception in thread "main" java.lang.RuntimeException: [unresolved dependency: a#b;1: not found]\n'
     "\tat org.apache.spark.util.MavenUtils$.resolveMavenCoordinates(MavenUtils.scala:539)\n", None),
    ('Exception in thread "main" java.lang.RuntimeException: [download failed: io.delta#d;4.3.1!d.jar]\n',
     None),
    ("", None),
])
def test_a_refusal_is_read_from_this_start_s_output(tmp_path: Path, output: str, reason: str | None) -> None:
    log = tmp_path / "spark.log"
    log.write_text(EARLIER)
    start = log.stat().st_size
    with log.open("a") as handle:
        handle.write(output)
    assert _refusal(log, start) == reason


@pytest.mark.parametrize(("output", "reason"), [
    ("26/12/05 20:01:02 ERROR StandaloneSchedulerBackend: Application has been killed. Reason: "
     "All masters are unresponsive! Giving up.\n", "Application has been killed. Reason: All masters are "
     "unresponsive! Giving up."),
    ("26/12/05 20:01:02 ERROR StandaloneAppClient$ClientEndpoint: All masters are unresponsive! Giving up.\n",
     "All masters are unresponsive! Giving up."),
    ("26/12/05 20:01:02 WARN Utils: Service 'sparkDriver' could not bind on a random free port.\n", None),
])
def test_why_spark_stopped_the_context_it_started_is_read_from_its_log(
    tmp_path: Path, output: str, reason: str | None
) -> None:
    log = tmp_path / "spark.log"
    earlier = "26/12/05 19:00:00 ERROR StandaloneAppClient$ClientEndpoint: All masters are unresponsive!"
    log.write_text(f"{earlier} Giving up.\n")
    start = log.stat().st_size
    with log.open("a") as handle:
        handle.write(output)
    assert _stopped_because(log, start) == reason
