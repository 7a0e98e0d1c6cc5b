import hashlib
import hmac
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeward.config import load_settings
from lakeward.privacy.keys import (
    MissingKeyError,
    _warn_short_once,
    check_key,
    fingerprint,
    pii_key,
    withdraw_generated_key,
)
from lakeward.privacy.pseudonymize import hmac_sha256

VALUES = ["usr_0123456789ab", "", "Müller ünïcode", "x" * 300, None]


@pytest.mark.parametrize("key", [b"k" * 16, b"a-longer-secret-key-" * 5])
def test_hmac_matches_python(spark: SparkSession, key: bytes) -> None:
    df = spark.createDataFrame([(v,) for v in VALUES], "v string")
    got = dict(df.select("v", hmac_sha256(F.col("v"), key).alias("h")).collect())
    for value in VALUES:
        expected = None if value is None else hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
        assert got[value] == expected


def test_hmac_rejects_empty_key(spark: SparkSession) -> None:
    with pytest.raises(ValueError, match="the HMAC key must not be empty"):
        hmac_sha256(F.lit("x"), b"")


def test_local_key_generated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("LAKEWARD_PII_KEY", raising=False)
    settings = load_settings("local", data_root=tmp_path)
    first = pii_key(settings)
    second = pii_key(settings)
    assert first == second and len(first) >= 32
    assert (tmp_path / "pii.key").stat().st_mode & 0o077 == 0
    assert sum("generated a local pseudonymization key" in r.message for r in caplog.records) == 1


def test_only_a_key_this_process_generated_and_silver_refused_is_withdrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAKEWARD_PII_KEY", raising=False)
    settings = load_settings("local", data_root=tmp_path)
    check_key(settings)
    assert not (tmp_path / "pii.key").exists(), "checking the key generates none"
    generated = pii_key(settings)
    # Silver wrote with the generated key, and refuses another one later in the same process.
    assert withdraw_generated_key(settings, b"another key, long enough to be one") is None
    assert pii_key(settings) == generated
    assert withdraw_generated_key(settings, generated) == tmp_path / "pii.key"
    assert not (tmp_path / "pii.key").exists()
    # A file this process did not generate stays, whatever key is refused.
    (tmp_path / "pii.key").write_bytes(generated)
    assert withdraw_generated_key(settings, generated) is None
    assert (tmp_path / "pii.key").read_bytes() == generated


def test_processes_starting_at_once_share_one_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKEWARD_PII_KEY", raising=False)
    # Each process waits for the same moment, then asks for the key of a fresh data root.
    # Each says whether it was ready before that moment: one that was not ran after the others.
    code = (
        "import sys, time\n"
        "from lakeward.config import load_settings\n"
        "from lakeward.privacy.keys import pii_key\n"
        "settings = load_settings('local', data_root=sys.argv[1])\n"
        "wait = float(sys.argv[2]) - time.time()\n"
        "time.sleep(max(0.0, wait))\n"
        "print(pii_key(settings).decode(), wait > 0)\n"
    )
    for head_start in (3, 15, 60):  # longer when a loaded machine started them too slowly
        root = tmp_path / f"head-start-{head_start}"
        start = time.time() + head_start
        runs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(start)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
        outputs = [run.communicate(timeout=180) for run in runs]
        assert [run.returncode for run in runs] == [0] * 6, [err for _, err in outputs]
        keys, ready = zip(*(out.split() for out, _ in outputs), strict=True)
        assert set(keys) == {(root / "pii.key").read_text().strip()}
        assert sorted(path.name for path in root.iterdir()) == ["pii.key"]
        if set(ready) == {"True"}:
            break
    assert set(ready) == {"True"}, "the processes never asked for the key at the same moment"


def test_prod_refuses_without_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKEWARD_PII_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="LAKEWARD_PII_KEY is not set"):
        pii_key(load_settings("prod", data_root=tmp_path))


def test_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEWARD_PII_KEY", "s" * 40)
    assert pii_key(load_settings("prod", data_root=tmp_path)) == b"s" * 40
    assert not (tmp_path / "pii.key").exists()


def test_a_short_key_from_the_environment_is_taken_locally_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LAKEWARD_PII_KEY", "secret")
    _warn_short_once.cache_clear()
    with caplog.at_level("WARNING", logger="lakeward.privacy.keys"):
        for _ in range(2):
            assert pii_key(load_settings("local", data_root=tmp_path)) == b"secret"
    warnings = [r.getMessage() for r in caplog.records if "shorter than 16" in r.getMessage()]
    assert len(warnings) == 1 and "secret" not in warnings[0]
    for env in ("dev", "prod"):
        with pytest.raises(MissingKeyError, match=f"16 bytes, which the {env} environment refuses"):
            pii_key(load_settings(env, data_root=tmp_path))


@pytest.mark.parametrize("content", [b"", b"abc\n"])
def test_a_key_file_too_short_to_be_a_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    monkeypatch.delenv("LAKEWARD_PII_KEY", raising=False)
    (tmp_path / "pii.key").write_bytes(content)
    with pytest.raises(MissingKeyError, match=r"pii\.key holds \d bytes, fewer than 16"):
        pii_key(load_settings("local", data_root=tmp_path))


def test_a_fingerprint_tells_keys_apart_and_hides_them() -> None:
    mark = fingerprint(b"k" * 32)
    assert mark == fingerprint(b"k" * 32) != fingerprint(b"j" * 32)
    assert len(mark) == 16 and "k" not in mark
