import errno
import os
import shlex
import shutil
from datetime import date
from pathlib import Path

import pytest

from lakeward import config
from lakeward.config import ConfigError, default_conf_dir, load_settings


def _conf(tmp_path: Path, base_extra: str = "", local: str = "") -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    base = (default_conf_dir() / "base.yml").read_text()
    (conf / "base.yml").write_text(base + base_extra)
    (conf / "local.yml").write_text(local)
    return conf


def test_base_and_overlay_merge(tmp_path: Path) -> None:
    conf = _conf(tmp_path, local="pipeline:\n  allowed_lateness_days: 3\n")
    settings = load_settings("local", conf_dir=conf, data_root=tmp_path / "home")
    assert settings.pipeline.allowed_lateness_days == 3
    assert settings.pipeline.max_amount == 1000.0  # from base
    assert settings.table("silver_orders") == "silver.orders"
    assert settings.data_root == (tmp_path / "home").resolve()
    assert settings.landing_dir == settings.data_root / "landing"


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    (conf / "local.yml").write_bytes(b"pipeline:\n  max_amount: 10\xff\n")
    with pytest.raises(ConfigError, match=r"local\.yml: not UTF-8 text \(byte 26\)"):
        load_settings("local", conf_dir=conf)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    conf = _conf(tmp_path, local="pipeline:\n  allowed_latenes_days: 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings("local", conf_dir=conf)
    assert "local.yml" in str(err.value)
    assert "pipeline.allowed_latenes_days" in str(err.value)
    assert "unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("local", "message"),
    [
        ("spark:\n  mastr: x\n", r"local\.yml: spark\.mastr: unknown key; expected one of mode, master,"),
        # One error, and it names the overlay that holds the bad list item.
        ("pipeline:\n  feature_windows_days: [7, soon]\n",
         r"^\S*local\.yml: pipeline\.feature_windows_days\.1: [^;]*'soon'[^;]*$"),
        ("data_root: 5\n", r"local\.yml: data_root: expected a path \(found 5\)"),
        ("env: prod\n", r"local\.yml: env: unknown key; set by lakeward"),
        ("project_dir: /elsewhere\n", r"local\.yml: project_dir: unknown key"),
        # YAML's true is not a number of days, a quoted number is text, 1 is not a boolean.
        ("pipeline:\n  allowed_lateness_days: true\n",
         r"local\.yml: pipeline\.allowed_lateness_days: Input should be a valid integer \(found True\)"),
        ("pipeline:\n  max_amount: '7'\n", r"local\.yml: pipeline\.max_amount: .*number \(found '7'\)"),
        ("spark:\n  ui: 1\n", r"local\.yml: spark\.ui: Input should be a valid boolean"),
        ("spark:\n  conf: {spark.sql.session.timeZone: Europe/Paris}\n",
         r"local\.yml: spark\.conf: spark\.sql\.session\.timeZone: expected UTC, .*\(found 'Europe/Paris'\)"),
        ("demo:\n  start: soon\n",
         r"local\.yml: demo\.start: .*expected a date, YYYY-MM-DD \(found 'soon'\)"),
        # YAML turns an unquoted date into a date; one that does not exist stays text, named by its key.
        ("demo:\n  start: 2026-02-30\n", r"local\.yml: demo\.start: .*YYYY-MM-DD \(found '2026-02-30'\)$"),
        # Python reads other ISO 8601 forms too; the command line refuses them, so does the config.
        ("demo:\n  start: '20260101'\n", r"local\.yml: demo\.start: .*YYYY-MM-DD \(found '20260101'\)$"),
        ("demo:\n  start: 2026-W01-1\n", r"local\.yml: demo\.start: .*YYYY-MM-DD \(found '2026-W01-1'\)$"),
        ("data_root: false\n", r"local\.yml: data_root: expected a path \(found False\)"),
        ("data_root: ''\n", r"local\.yml: data_root: expected a path \(found ''\)"),
        ("7: x\n",
         r"local\.yml: key 7 is not text; keys are names \(line 1, column 1\)$"),
        # The gap between temporal parts is the label horizon (30 days by default).
        ("training_set:\n  t1: 2026-01-05\n  t2: 2026-01-20\n",
         r"local\.yml: training_set: .*t2 - t1 \(15 days\) must be longer than horizon_days \(30\)"),
        # A section given twice would otherwise lose the first one's settings.
        ("pipeline: {max_amount: 5.0}\npipeline: {allowed_lateness_days: 3}\n",
         r"local\.yml: not valid YAML: key 'pipeline' given twice in one mapping \(line 2, column 1\)$"),
        ("tables:\n  silver_ordres: silver.orderz\n",
         r"local\.yml: tables: unknown table\(s\) silver_ordres; expected names from bronze_order_placed,"),
        ("tables:\n  silver_orders: silver orders\n",
         r"local\.yml: tables: expected schema\.table or catalog\.schema\.table names, "
         r"found silver_orders: 'silver orders'$"),
        ("training_set:\n  <<: {seed: 1, seed: 2}\n",
         r"local\.yml: not valid YAML: key 'seed' given twice in one mapping \(line 2, column 17\)$"),
        # The generator faults a line at most once with these three.
        ("generator:\n  faults: {malformed: 0.6, null_key: 0.5}\n",
         r"local\.yml: generator\.faults: malformed \+ null_key \+ out_of_range must not exceed 1; "
         r"got 1\.105$"),
        # The overlay's list replaces the base's whole: the missing item is the overlay's.
        ("training_set:\n  fractions: [0.5, 0.5]\n",
         r"^\S*local\.yml: training_set\.fractions\.2: Field required"),
        # NaN passes every comparison; YAML writes it .nan, and infinity .inf.
        ("training_set:\n  fractions: [.nan, 0.5, 0.5]\n",
         r"local\.yml: training_set\.fractions\.0: Input should be a finite number \(found nan\)"),
        ("training:\n  learning_rate: .inf\n",
         r"local\.yml: training\.learning_rate: Input should be a finite number \(found inf\)"),
        # A Databricks workspace: experiments by path, and Unity Catalog's three-part model names.
        ("tracking:\n  uri: databricks\n",
         r"local\.yml: tracking: .*experiment: a Databricks workspace names experiments by their path, "
         r"such as /Shared/lakeward-churn \(found 'lakeward-churn'\)$"),
        ("tracking:\n  uri: databricks://ml\n  experiment: /Shared/churn\n",
         r"local\.yml: tracking: .*registered_model: Unity Catalog names a model catalog\.schema\.model "
         r"\(found 'lakeward_churn'\)"),
        ("tracking:\n  registry_uri: databricks-uc\n",
         r"local\.yml: tracking: .*registered_model: Unity Catalog names a model catalog\.schema\.model"),
        ("privacy:\n  pii_key_env: ''\n",
         r"local\.yml: privacy\.pii_key_env: expected the name of an environment variable \(found ''\)"),
    ],
)
def test_bad_keys_name_the_overlay_and_what_was_expected(tmp_path: Path, local: str, message: str) -> None:
    conf = _conf(tmp_path, local=local)
    with pytest.raises(ConfigError, match=message):
        load_settings("local", conf_dir=conf)


def test_spark_conf_takes_numbers_and_booleans_as_the_text_spark_reads(tmp_path: Path) -> None:
    conf = _conf(tmp_path, local=(
        "spark:\n  conf:\n    spark.sql.shuffle.partitions: 4\n    spark.sql.adaptive.enabled: false\n"
        "    spark.memory.fraction: 0.5\n    spark.driver.memory: 2g\n"
    ))
    settings = load_settings("local", conf_dir=conf)
    expected = {"spark.sql.shuffle.partitions": "4", "spark.sql.adaptive.enabled": "false",
                "spark.memory.fraction": "0.5", "spark.driver.memory": "2g"}
    assert {key: settings.spark.conf[key] for key in expected} == expected
    for number, (value, found) in enumerate((("null", "None"), ("[1, 2]", r"\[1, 2\]"), (".nan", "nan"))):
        (tmp_path / str(number)).mkdir()
        conf = _conf(tmp_path / str(number), local=f"spark:\n  conf:\n    spark.x: {value}\n")
        message = rf"local\.yml: spark\.conf\.spark\.x: .*string \(found {found}\)"
        with pytest.raises(ConfigError, match=message):
            load_settings("local", conf_dir=conf)


def test_dates_numbers_paths_and_lists_take_their_yaml_forms(tmp_path: Path) -> None:
    conf = _conf(tmp_path, local=(
        "demo:\n  start: 2026-02-01\n"
        "training_set:\n  t1: '2026-03-01'\n  t2: 2026-04-01\n  fractions: [0.5, 0.25, 0.25]\n"
        "pipeline:\n  max_amount: 500\nspark:\n  class_data_dir: /tmp/archives\n"
    ))
    settings = load_settings("local", conf_dir=conf)
    assert (settings.demo.start, settings.training_set.t1) == (date(2026, 2, 1), date(2026, 3, 1))
    assert settings.training_set.fractions == (0.5, 0.25, 0.25) and settings.pipeline.max_amount == 500.0
    assert settings.spark.class_data_dir == Path("/tmp/archives")


def test_contracts_come_from_the_conf_directory_in_use(tmp_path: Path) -> None:
    copy = tmp_path / "strict"  # not named conf: the contracts still come with it
    shutil.copytree(default_conf_dir(), copy)
    assert load_settings("local", conf_dir=copy).contracts_dir == copy.resolve() / "contracts"
    assert load_settings("local").contracts_dir == default_conf_dir().resolve() / "contracts"


@pytest.mark.parametrize(
    ("base_change", "local", "message"),
    [
        ({"  ops_gold_runs: ops.gold_runs\n": "  ops_gold_runs: ops.gold_runs\n  extra_table: x.y\n"},
         "tables:\n  silver_orders: silver.orders2\n",
         r"/base\.yml: tables: unknown table\(s\) extra_table;"),
        ({}, "tables:\n  extra_table: x.y\n", r"/local\.yml: tables: unknown table\(s\) extra_table;"),
        ({"malformed: 0.005": "malformed: 0.6", "out_of_range: 0.005": "out_of_range: 0.5"},
         "generator:\n  faults: {duplicate: 0.1}\n", r"/base\.yml: generator\.faults: malformed \+ null_key"),
        # An empty overlay section changes nothing of the base's.
        ({"  ops_gold_runs: ops.gold_runs\n": "  ops_gold_runs: ops.gold_runs\n  extra_table: x.y\n"},
         "tables: {}\n", r"/base\.yml: tables: unknown table\(s\) extra_table;"),
        # Both are wrong, and the overlay's value is the one the merge kept.
        ({"spark.sql.session.timeZone: UTC": "spark.sql.session.timeZone: Europe/Paris"},
         "spark:\n  conf: {spark.sql.session.timeZone: America/New_York}\n",
         r"/local\.yml: spark\.conf: .*\(found 'America/New_York'\)$"),
    ],
)
def test_a_section_check_names_the_file_that_breaks_it(
    tmp_path: Path, base_change: dict[str, str], local: str, message: str
) -> None:
    """A check of a whole section both files set part of names the base when the base alone fails it."""
    conf = _conf(tmp_path, local=local)
    base = (conf / "base.yml").read_text()
    for old, new in base_change.items():
        assert old in base
        base = base.replace(old, new)
    (conf / "base.yml").write_text(base)
    with pytest.raises(ConfigError, match=message):
        load_settings("local", conf_dir=conf, data_root=tmp_path / "home")


def test_an_environment_needs_its_overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prod.yml, --env prod would run with the base's local settings."""
    conf = _conf(tmp_path)
    with pytest.raises(ConfigError, match=r"/prod\.yml: not found; .*\(an overlay may be empty\)$"):
        load_settings("prod", conf_dir=conf)
    monkeypatch.setenv("LAKEWARD_ENV", "staging")
    with pytest.raises(ConfigError, match=r"^unknown environment 'staging' \(from LAKEWARD_ENV\)"):
        load_settings(conf_dir=conf)


def test_null_data_root_means_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKEWARD_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    conf = _conf(tmp_path, local="data_root:\n")
    assert load_settings("local", conf_dir=conf).data_root == (tmp_path / ".lakeward").resolve()


def test_missing_conf_dir_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"base\.yml: not found; set LAKEWARD_CONF_DIR"):
        load_settings("local", conf_dir=tmp_path / "nowhere")


def test_wrong_type_names_expected(tmp_path: Path) -> None:
    conf = _conf(tmp_path, local="pipeline:\n  max_amount: lots\n")
    with pytest.raises(ConfigError) as err:
        load_settings("local", conf_dir=conf)
    message = str(err.value)
    assert "local.yml" in message and "pipeline.max_amount" in message and "'lots'" in message


def test_error_in_base_names_base(tmp_path: Path) -> None:
    conf = _conf(tmp_path, base_extra="\nsurprise: 1\n")
    with pytest.raises(ConfigError, match=r"base\.yml: surprise: unknown key"):
        load_settings("local", conf_dir=conf)


def test_home_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEWARD_HOME", str(tmp_path / "elsewhere"))
    assert load_settings("local").data_root == (tmp_path / "elsewhere").resolve()


def test_a_data_root_that_is_a_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("LAKEWARD_HOME", str(afile))
    with pytest.raises(ConfigError, match=rf"data root {afile} is not a directory; set LAKEWARD_HOME"):
        load_settings("local")
    monkeypatch.setenv("LAKEWARD_HOME", str(afile / "sub" / "root"))
    with pytest.raises(ConfigError, match=rf"is not a directory \({afile} is a file\); set LAKEWARD_HOME"):
        load_settings("local")
    monkeypatch.setenv("LAKEWARD_HOME", str(tmp_path / "a;b"))
    with pytest.raises(ConfigError, match=r"data root \S+/a;b has a ';' in it, .*Derby.*; set LAKEWARD_HOME"):
        load_settings("local")
    monkeypatch.setenv("LAKEWARD_HOME", str(tmp_path / "a:b"))
    with pytest.raises(ConfigError, match=r"data root \S+/a:b has a ':' in it, .*; set LAKEWARD_HOME"):
        load_settings("local")
    assert not (tmp_path / "a:b").exists()
    for name, shown in (("r[1]", r"'\[' '\]'"), ("x*", r"'\*'"), ("a{b}", r"'\{' '\}'")):
        monkeypatch.setenv("LAKEWARD_HOME", str(tmp_path / name))
        with pytest.raises(ConfigError, match=rf"has {shown} in it, which Spark reads as a file name"):
            load_settings("local")


def test_a_data_root_nothing_can_be_written_in_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakeward import root_lock

    settings = load_settings("local", data_root=tmp_path / "root")

    def read_only(path: Path, *args: object, **kwargs: object) -> None:
        # The tests may run as root, whom file modes do not stop: the file system's answer instead.
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ConfigError, match=r"cannot write in the data root \S+/root \(Read-only file "
                       r"system: \S+/root/metastore\); set LAKEWARD_HOME .* you can write in"):
        root_lock.hold(settings)


def test_environment_from_variable_and_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEWARD_ENV", "prod")
    assert load_settings().env == "prod"
    assert load_settings().privacy.generate_key_if_missing is False
    with pytest.raises(ConfigError, match="unknown environment"):
        load_settings("staging")
    # An empty --env is not "not given": it would fall back to LAKEWARD_ENV, here prod.
    with pytest.raises(ConfigError, match="unknown environment ''"):
        load_settings("")


def test_unknown_logical_table() -> None:
    with pytest.raises(ConfigError, match="no table configured"):
        load_settings("local").table("silver_nothing")


def test_driver_java_options_must_be_single_flags(tmp_path: Path) -> None:
    conf = _conf(tmp_path, local='spark:\n  driver_java_options: ["-Xss4m -Xmx2g", "UseParallelGC"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings("local", conf_dir=conf)
    message = str(err.value)
    assert "local.yml" in message and "spark.driver_java_options" in message
    assert "-Xss4m -Xmx2g" in message and "UseParallelGC" in message


def test_driver_java_options_keep_the_spark_conf_ones(tmp_path: Path) -> None:
    from lakeward.session import driver_java_options

    local = (
        'spark:\n  driver_java_options: ["-XX:+UseParallelGC"]\n'
        '  conf:\n    spark.driver.extraJavaOptions: "-Dlakeward.probe=1"\n'
    )
    # Spark splits the options at spaces outside double quotes, as a POSIX shell does.
    home = tmp_path / 'my "home" 50%'
    settings = load_settings("local", conf_dir=_conf(tmp_path, local=local), data_root=home)
    options = shlex.split(driver_java_options(settings))
    assert f"-Dderby.system.home={settings.metastore_dir}" in options
    assert options[-2:] == ["-XX:+UseParallelGC", "-Dlakeward.probe=1"]


@pytest.mark.parametrize("target", [False, True], ids=["prefix", "pip-target"])
def test_a_regular_install_finds_its_copy_of_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: bool
) -> None:
    # The layout pip gives a wheel's data files: <prefix>/share/..., listed in the
    # RECORD of <prefix>/lib/python3.X/site-packages/lakeward-*.dist-info. Under
    # `pip install --target T` they go to T/share/... instead, with the same RECORD.
    prefix = tmp_path / "prefix"
    site = prefix if target else prefix / "lib" / "python3.11" / "site-packages"
    dist_info = site / "lakeward-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: lakeward\nVersion: 0.1.0\n")
    installed = prefix / "share" / "lakeward" / "conf"
    installed.mkdir(parents=True)
    for name in ("base.yml", "local.yml"):
        (installed / name).write_text((default_conf_dir() / name).read_text())
    (dist_info / "RECORD").write_text(
        "lakeward/__init__.py,,\n../../../share/lakeward/conf/base.yml,,\n"
    )
    monkeypatch.setattr(config.metadata, "distribution",
                        lambda name: config.metadata.PathDistribution(dist_info))
    monkeypatch.setattr(config, "__file__", str(site / "lakeward" / "config.py"))
    monkeypatch.delenv("LAKEWARD_CONF_DIR", raising=False)
    assert default_conf_dir() == installed.resolve()
    settings = load_settings("local")
    assert settings.conf_dir == installed.resolve()
    assert settings.contracts_dir == installed / "contracts"


def test_a_schema_suffix_gives_every_table_a_schema_of_its_own(tmp_path: Path) -> None:
    settings = load_settings("local", conf_dir=_conf(tmp_path), data_root=tmp_path / "home")
    isolated = settings.with_schema_suffix("0a1b")
    assert isolated.table("silver_orders") == "silver_0a1b.orders"
    assert isolated.table("ops_gold_runs") == "ops_0a1b.gold_runs"
    assert set(isolated.tables) == set(settings.tables)
    with pytest.raises(ConfigError, match="cannot take the schema suffix 'x; DROP'"):
        settings.with_schema_suffix("x; DROP")


def test_prod_cannot_be_set_to_generate_its_key(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    (conf / "prod.yml").write_text("privacy:\n  generate_key_if_missing: true\n")
    with pytest.raises(ConfigError, match=r"prod\.yml: privacy\.generate_key_if_missing: expected false"):
        load_settings("prod", conf_dir=conf)


def test_a_three_part_table_name_is_taken_and_its_schema_takes_a_suffix(tmp_path: Path) -> None:
    conf = _conf(tmp_path, local="tables:\n  silver_orders: main.silver.orders\n")
    settings = load_settings("local", conf_dir=conf)
    assert settings.table("silver_orders") == "main.silver.orders"
    assert settings.with_schema_suffix("t1").table("silver_orders") == "main.silver_t1.orders"


def test_yaml_merge_keys_still_merge_and_keys_beside_them_win(tmp_path: Path) -> None:
    conf = _conf(tmp_path, local="training_set:\n  <<: &defaults {horizon_days: 20, seed: 3}\n  seed: 4\n")
    settings = load_settings("local", conf_dir=conf)
    assert (settings.training_set.horizon_days, settings.training_set.seed) == (20, 4)


def test_a_value_the_merge_takes_whole_from_the_overlay_is_the_overlay_s() -> None:
    assert config._sets({"a": [1]}, {"a": [1, 2]}, ["a", 1])  # the overlay's shorter list
    assert config._sets({"a": {"b": 1}}, {"a": 5}, ["a", "c"])  # a mapping where base has none
    assert not config._sets({"a": {"b": 1}}, {"a": {"c": 2}}, ["a", "c"])  # merged: c is base's
    assert not config._sets({}, {"a": 1}, ["a"])


@pytest.mark.parametrize(
    ("tracking", "registry"),
    [
        ("uri: databricks\n  experiment: /Shared/churn\n  registered_model: ml.churn.model\n",
         "databricks-uc"),
        ("uri: databricks://ml\n  experiment: /Shared/churn\n  registered_model: ml.churn.model\n",
         "databricks-uc://ml"),
        # The workspace's own registry, asked for by name: any model name.
        ("uri: databricks\n  registry_uri: databricks\n  experiment: /Shared/churn\n", "databricks"),
        ("uri: http://mlflow:5000\n", "http://mlflow:5000"),
        ("uri: http://mlflow:5000\n  registry_uri: sqlite:////srv/registry.db\n", "sqlite:////srv/registry.db"),
    ],
)
def test_models_are_registered_in_the_tracking_store_or_unity_catalog_for_databricks(
    tmp_path: Path, tracking: str, registry: str
) -> None:
    from lakeward.tracking import registry_uri

    conf = _conf(tmp_path, local=f"tracking:\n  {tracking}")
    assert registry_uri(load_settings("local", conf_dir=conf, data_root=tmp_path / "home")) == registry


def test_without_a_tracking_uri_models_go_to_the_data_root_s_store(tmp_path: Path) -> None:
    from lakeward.tracking import registry_uri, tracking_uri

    settings = load_settings("local", data_root=tmp_path)
    assert registry_uri(settings) == tracking_uri(settings) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
