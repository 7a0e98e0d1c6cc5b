"""Which class archive a driver JVM gets, decided without starting one."""

import fcntl
import shlex
from pathlib import Path

import pytest

from lakeward import class_data
from lakeward.config import Settings, load_settings


def _settings(tmp_path: Path, **spark: object) -> Settings:
    settings = load_settings("local", data_root=tmp_path / "home")
    update = {"class_data_dir": tmp_path / "archives", **spark}
    return settings.model_copy(update={"spark": settings.spark.model_copy(update=update)})


def test_the_archive_is_named_by_what_it_must_match(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    archive = class_data.archive_path(settings)
    assert archive is not None and archive.parent == tmp_path / "archives"
    assert archive == class_data.archive_path(_settings(tmp_path))
    other_options = _settings(tmp_path, driver_java_options=["-XX:+UseSerialGC"])
    other_jars = _settings(tmp_path, conf={**settings.spark.conf, "spark.jars": "/opt/extra.jar"})
    other_memory = _settings(tmp_path, conf={**settings.spark.conf, "spark.driver.memory": "4g"})
    assert class_data.archive_path(other_options) != archive
    assert class_data.archive_path(other_jars) != archive
    assert class_data.archive_path(other_memory) == archive  # not part of the classpath
    assert class_data.archive_path(_settings(tmp_path, class_data_sharing=False)) is None


def test_an_archive_path_with_a_space_stays_one_jvm_option(tmp_path: Path) -> None:
    from lakeward.session import jvm_options

    settings = _settings(tmp_path, class_data_dir=tmp_path / "my archives")
    archive = class_data.archive_path(settings)
    assert archive is not None
    archive.parent.mkdir()
    archive.write_bytes(b"")
    # Spark splits the options at spaces outside double quotes, as a POSIX shell does.
    assert shlex.split(jvm_options(settings))[-1] == f"-XX:SharedArchiveFile={archive}"


def test_an_archive_in_place_is_mapped(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    archive = class_data.archive_path(settings)
    assert archive is not None
    archive.parent.mkdir()
    archive.write_bytes(b"")
    assert class_data.java_options(settings) == [f"-XX:SharedArchiveFile={archive}"]


def test_no_archive_is_written_while_another_process_writes_it_or_after_a_failure(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    archive = class_data.archive_path(settings)
    assert archive is not None
    archive.parent.mkdir()
    with archive.with_suffix(".lock").open("w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert class_data.java_options(settings) == []
    class_data.failure_note(archive).write_text("the JVM exited with 1\n")
    assert class_data.java_options(settings) == []
    assert sorted(path.name for path in archive.parent.iterdir()) == [
        archive.with_suffix(".failed").name, archive.with_suffix(".lock").name,
    ]


def test_writing_an_archive_in_the_environment_removes_those_of_other_releases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "venv-var"
    monkeypatch.setattr(class_data, "_environment_directory", lambda: directory)
    registered: list[tuple[object, ...]] = []
    monkeypatch.setattr(class_data.atexit, "register", lambda *args: registered.append(args))
    settings = _settings(tmp_path, class_data_dir=None)
    archive = class_data.archive_path(settings)
    assert archive is not None and archive.parent == directory
    other_options = class_data.archive_path(_settings(tmp_path, class_data_dir=None, driver_java_options=[]))
    assert other_options is not None
    directory.mkdir()
    old_release = [directory / name for name in (
        "driver-0123456789abcdef.jsa",  # named before releases were in the name
        "driver-spark4.0.0-delta4.0.0-0123456789abcdef.jsa",
        "driver-spark4.0.0-delta4.0.0-0123456789abcdef.lock",
        "driver-spark4.0.0-delta4.0.0-0123456789abcdef.failed",
    )]
    for path in [*old_release, other_options, directory / "notes.txt"]:
        path.write_bytes(b"")

    options = class_data.java_options(settings)

    assert options[0].startswith("-XX:ArchiveClassesAtExit=") and len(registered) == 1
    assert sorted(path.name for path in directory.iterdir()) == sorted(
        [archive.with_suffix(".lock").name, other_options.name, "notes.txt"]
    )


def test_a_shared_archive_directory_keeps_other_releases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(class_data.atexit, "register", lambda *args: None)
    settings = _settings(tmp_path)
    archive = class_data.archive_path(settings)
    assert archive is not None
    archive.parent.mkdir()
    other_release = archive.parent / "driver-spark4.0.0-delta4.0.0-0123456789abcdef.jsa"
    other_release.write_bytes(b"")
    assert class_data.java_options(settings)[0].startswith("-XX:ArchiveClassesAtExit=")
    assert other_release.exists()
